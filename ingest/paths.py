"""Resolve file names that a source's annotation gives, refusing any that escape the image root."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


class PathEscape(ValueError):
    pass


def resolve_inside(root: Path, name: str) -> Path:
    """root/name, provided it stays inside root once `..` and symlinks are resolved.

    Raises PathEscape for absolute names, `..` climbs and links pointing out of the root."""
    if not name or "\0" in name:
        raise PathEscape(f"invalid file name {name!r}")
    if os.path.isabs(name) or name.startswith("~"):
        raise PathEscape(f"absolute file name {name!r} is not allowed; names are relative to {root}")
    candidate = root / name
    real_root = _real(str(root))
    real = Path(os.path.realpath(candidate))
    if real != real_root and real_root not in real.parents:
        how = "a symlink pointing" if candidate.is_symlink() or _has_link(root, name) else "a path"
        raise PathEscape(f"{name!r} is {how} outside the image root {root}")
    return candidate


@lru_cache(maxsize=64)
def _real(root: str) -> Path:
    return Path(os.path.realpath(root))  # resolved once per root, not once per image


def _has_link(root: Path, name: str) -> bool:
    p = root
    for part in Path(name).parts:
        p = p / part
        if p.is_symlink():
            return True
    return False
