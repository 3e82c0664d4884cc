"""One writer per store: an advisory flock on `<store>/writer.lock`, whose file names the holder."""

import fcntl
import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from clipstore.warehouse.errors import StoreLockedError


def _holder() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def describe_holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')!r}, since {info.get('since')})"


@contextmanager
def writer_lock(store_root: Path, wait: bool = False, timeout: float | None = None):
    """Hold the store's writer lock for the duration of the block.

    Without `wait`, a held lock raises StoreLockedError at once, naming the holder; with it,
    the caller queues (up to `timeout` seconds when given)."""
    lock_path = store_root / "writer.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (timeout is not None and time.monotonic() - start > timeout):
                    raise StoreLockedError(
                        f"the store is being written by {describe_holder(lock_path)}",
                        where=str(store_root),
                        fix="wait for that run to finish, or pass --wait to queue behind it",
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing releases the flock
