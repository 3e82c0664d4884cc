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

_HELD: dict[int, Path] = {}   # descriptor -> lock file, for the writer locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child: close the parent's lock descriptors. A flock belongs to the open file,
    which a fork shares, so a child that kept them would hold the store's lock after its parent
    died (a SIGKILLed run's helpers). The parent's own descriptors keep the lock held."""
    for fd in list(_HELD):
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


def _open_lock_file(store_root: Path) -> tuple[Path, int]:
    lock_path = store_root / "writer.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    return lock_path, os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)


def _locked_error(store_root: Path, lock_path: Path) -> StoreLockedError:
    return StoreLockedError(
        f"the store is being written by {describe_holder(lock_path)}",
        where=str(store_root),
        fix="wait for that run to finish, or pass --wait to queue behind it",
    )


def _held_here(lock_path: Path) -> bool:
    return any(p == lock_path.absolute() for p in _HELD.values())


def check_writable(store_root: Path, wait: bool = False) -> None:
    """Fail fast, before expensive set-up (loading a model), when a write would be refused: the
    store is read-only, or (without `wait`) another process holds the writer lock. A
    non-blocking try that lets go at once; it never writes the lock file, which names its holder."""
    store_root = Path(store_root)
    if not store_root.exists():
        return   # the store will be created by the writer itself
    lock_path, fd = _open_lock_file(store_root)   # EROFS/EACCES surface here, with the path
    try:
        if wait or _held_here(lock_path):
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked_error(store_root, lock_path) from None
    finally:
        os.close(fd)   # closing releases the probe's flock, if it got one


@contextmanager
def writer_lock(store_root: Path, wait: bool = False, timeout: float | None = None):
    """Hold the store's writer lock for the duration of the block.

    Without `wait`, a held lock raises StoreLockedError at once, naming the holder; with it,
    the caller queues (up to `timeout` seconds when given). Only the holder writes the lock
    file: a refused writer leaves the holder's name in place."""
    lock_path, fd = _open_lock_file(store_root)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait or (timeout is not None and time.monotonic() - start > timeout):
                    raise _locked_error(store_root, lock_path) from None
                time.sleep(0.2)
    except BaseException:
        os.close(fd)
        raise
    _HELD[fd] = lock_path.absolute()
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        except OSError as exc:   # a full disk: say which file could not be written
            raise OSError(exc.errno, exc.strerror, str(lock_path)) from None
        yield
    finally:
        _HELD.pop(fd, None)
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
