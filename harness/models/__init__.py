"""Models by name: ResNet18 for 32x32 images and torchvision's classifiers; placement and compilation."""
