"""Pseudo-labels for unlabeled images: class votes, concepts, label propagation (docs/pseudolabels.md)."""
