"""Storage faults as errors: a full disk or a read-only store, raised from anywhere (the shard
writer, the Parquet writer, DuckDB, the lock file), becomes one ClipstoreError that says what
failed, where and how to fix it. The CLI's error wrapper applies it to every command."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from clipstore.warehouse.errors import ClipstoreError

FULL = {errno.ENOSPC, errno.EDQUOT}
READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
# Libraries that wrap the OS error in their own exception keep its text (pyarrow, DuckDB).
_MESSAGES = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
             "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


class StorageError(ClipstoreError):
    """The store's filesystem refused a write (full, read-only, not permitted)."""

    exit_code = 6


def _errno_of(exc: BaseException) -> int | None:
    code = getattr(exc, "errno", None)
    if code in FULL | READ_ONLY:
        return code
    text = str(exc)
    return next((c for m, c in _MESSAGES.items() if m in text), None)


def _free(path: Path) -> str:
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return ""
    return f" ({usage.free / 2**20:,.1f} MiB free of {usage.total / 2**20:,.0f} MiB now)"


def storage_error(exc: BaseException, store: str | Path | None = None,
                  command: str | None = None) -> StorageError | None:
    """The StorageError for a full-disk or read-only fault (looking through chained causes);
    None when `exc` is something else. `command` names what was running (`ingest`)."""
    seen = exc
    while seen is not None:
        code = _errno_of(seen)
        if code is not None:
            break
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    if store is None:
        from clipstore.warehouse.store import default_store_path
        store = default_store_path()
    path = getattr(seen, "filename", None)
    where = str(path) if path else f"the store {store}"
    if path and not str(Path(path).absolute()).startswith(str(Path(store).absolute())):
        where += f" (store: {store})"
    anchor = Path(path).parent if path else Path(store) if store else Path(".")
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    reason = str(getattr(seen, "strerror", None) or seen).splitlines()[0]
    failed = f"{command} failed: " if command else ""
    if code in FULL:
        return StorageError(
            f"{failed}the disk is full: {reason}", where=where,
            fix=f"free space on the filesystem holding it{_free(anchor)}, then run the command again: "
                "committed parts are kept and the run resumes after them; nothing half-written is visible")
    return StorageError(
        f"{failed}the store cannot be written: {reason}", where=where,
        fix="make it writable (remount read-write, or fix its owner/permissions), or pass --store to a "
            "writable copy; reading (sql, ls, show) works on a read-only store")
