"""Deterministic webdataset tars: members of a sample are adjacent and share the key prefix, and
every header is fixed (mtime, owner, mode), so the same samples give the same bytes. Headers come
from tarfile; data is written in one call per member (tarfile's copy loop is the slow part)."""

from __future__ import annotations

import tarfile
from pathlib import Path

FIXED_MTIME = 946684800  # 2000-01-01: a constant, so that tars are reproducible
BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE


class ShardWriter:
    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb", buffering=1 << 20)
        self._pos = 0
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> dict[str, tuple[int, int]]:
        """Add one sample; returns ext -> (byte offset of the member's data, size)."""
        if "." in key or "/" in key:
            raise ValueError(f"webdataset keys may not contain '.' or '/': {key!r}")
        where = {}
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            header = info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")
            self._emit(header)
            where[ext] = (self._pos, len(data))
            self._emit(data)
            self._emit(b"\0" * (-len(data) % BLOCK))
        self.count += 1
        return where

    def _emit(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise self._failed(exc) from None
        self._pos += len(data)

    def _failed(self, exc: OSError) -> OSError:
        """A full disk: let go of the file (its space frees once the run's temp folder is removed)
        and say which file could not be written."""
        try:
            self._file.close()
        except OSError:
            pass
        return OSError(exc.errno, exc.strerror, str(self.path))

    def close(self) -> None:
        """End-of-archive marker and padding to a whole record, exactly as tarfile writes them."""
        self._emit(b"\0" * (2 * BLOCK))
        self._emit(b"\0" * (-self._pos % RECORD))
        try:
            self._file.close()   # flushes the last buffered megabyte
        except OSError as exc:
            raise self._failed(exc) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
