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

_HELD: set[int] = set()   # descriptors of the writer locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child: close the parent's lock descriptors. A flock belongs to the open file,
    which a fork shares, so a child that kept them would hold the store's lock after its parent
    died (a SIGKILLed run's helpers). The parent's own descriptors keep the lock held."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


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
        _HELD.add(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield
    finally:
        _HELD.discard(fd)
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing releases the flock


def writer_alive(store_root: Path) -> bool:
    """Whether some process holds the store's writer lock now, without touching the lock (a
    probe that took it, even briefly, could refuse a real writer). Reads the kernel's lock
    table; where there is none, assumes a holder."""
    lock_path = store_root / "writer.lock"
    try:
        inode = os.stat(lock_path).st_ino
    except FileNotFoundError:
        return False   # no writer ever ran here
    try:
        with open("/proc/locks") as f:
            table = f.read().splitlines()
    except OSError:
        return True
    for line in table:
        fields = line.split()
        if "FLOCK" in fields and "->" not in fields:   # "->" marks a waiter, not a holder
            where = next((f for f in fields if f.count(":") == 2), "")
            if where.rsplit(":", 1)[-1] == str(inode):
                return True
    return False
