"""Stable digests: content ids for bytes, recipe digests for JSON-able parameters."""

import hashlib
import json
from pathlib import Path

ID_BYTES = 16  # ids are the first 16 bytes of SHA-256, as 32 hex characters


def content_id(data: bytes) -> str:
    """image_id: hex of the first 16 bytes of SHA-256 of the bytes."""
    return hashlib.sha256(data).digest()[:ID_BYTES].hex()


def text_id(*parts: object) -> str:
    """Id of a tuple of values (NUL-separated, so ('ab','c') != ('a','bc'))."""
    joined = "\0".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).digest()[:ID_BYTES].hex()


def canonical_json(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(obj: object) -> str:
    """Full SHA-256 hex of the canonical JSON form of obj (a recipe, a manifest)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
