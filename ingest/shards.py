"""Deterministic webdataset tars: members of a sample are adjacent and share the key prefix, and
every header is fixed (mtime, owner, mode), so the same samples give the same bytes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

FIXED_MTIME = 946684800  # 2000-01-01: a constant, so that tars are reproducible


class ShardWriter:
    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> dict[str, tuple[int, int]]:
        """Add one sample; returns ext -> (byte offset of the member's data, size)."""
        if "." in key or "/" in key:
            raise ValueError(f"webdataset keys may not contain '.' or '/': {key!r}")
        where = {}
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            header_at = self._tar.offset
            self._tar.addfile(info, io.BytesIO(data))
            where[ext] = (header_at + tarfile.BLOCKSIZE, len(data))
        self.count += 1
        return where

    def close(self) -> None:
        self._tar.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
