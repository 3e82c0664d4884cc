"""The store: artifact lifecycle, catalog, DuckDB views, read-only SQL and the writer lock."""

from clipstore.warehouse.errors import ClipstoreError, InputError, StoreLockedError, NotFoundError, ReadOnlyError
from clipstore.warehouse.store import Store, Artifact, ArtifactBuilder

__all__ = [
    "ClipstoreError", "InputError", "StoreLockedError", "NotFoundError", "ReadOnlyError",
    "Store", "Artifact", "ArtifactBuilder",
]
