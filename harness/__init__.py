"""harness: config-driven Ignite training of ResNet18 on CIFAR-10, with analysis and reports."""
