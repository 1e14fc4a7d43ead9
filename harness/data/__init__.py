"""Data: sources by name, the validation split, transforms, the replayable loaders, device augmentation."""
