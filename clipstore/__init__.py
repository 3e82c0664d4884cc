"""clipstore: a data-centric preprocessing and feature store for adapting CLIP to specialist domains."""

from importlib.metadata import PackageNotFoundError, version

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = version("clipstore")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
