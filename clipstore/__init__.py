"""clipstore: a data-centric preprocessing and feature store for adapting CLIP to specialist domains."""

__version__ = "0.1.0"
