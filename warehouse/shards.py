"""Reading images back out of a corpus's shard tars, for every stage that needs pixels (embed,
the trainer, the Python dataset, export). The `images` table records each stored image's shard and
the byte offset and size of its member's data, so one image costs one seek and one read, and a
whole sample's members can be copied out byte for byte."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from clipstore.warehouse.errors import NotFoundError


@dataclass(frozen=True)
class StoredImage:
    """Where one image's stored bytes sit: a shard tar and the member's data offset and size."""

    image_id: str
    sample_id: str
    shard: Path
    offset: int
    size: int


def read_bytes(tar: BinaryIO, ref: StoredImage) -> bytes:
    tar.seek(ref.offset)
    data = tar.read(ref.size)
    if len(data) != ref.size:
        raise OSError(f"shard ends after {len(data)} of {ref.size} bytes")
    return data


def decode(tar: BinaryIO, ref: StoredImage) -> Image.Image:
    """The stored image as RGB, fully decoded (a damaged member raises here, not later)."""
    image = Image.open(io.BytesIO(read_bytes(tar, ref)))
    image.load()
    return image.convert("RGB")


def corpus_images(store, session, corpus) -> list[StoredImage]:
    """Distinct images of a corpus artifact in shard order; a repeated image_id keeps its first
    copy. `session` is a warehouse.sql.Session over the store."""
    shards = {Path(p).name: store.root / p for p in session.query(
        "SELECT path FROM parts WHERE artifact_id = $id AND table_name = 'shards'",
        {"id": corpus.artifact_id}).column("path").to_pylist()}
    if "images" not in session.tables():
        return []
    rows = session.query('SELECT image_id, sample_id, shard, "offset", stored_bytes FROM images '
                         'WHERE corpus = $corpus ORDER BY shard, "offset"', {"corpus": corpus.name}).to_pylist()
    refs: dict[str, StoredImage] = {}
    for r in rows:
        if r["image_id"] in refs:
            continue
        if r["shard"] not in shards:
            raise NotFoundError(f"shard {r['shard']} of corpus {corpus.name} is not in the store",
                                where=str(corpus.path), fix="re-ingest the corpus")
        refs[r["image_id"]] = StoredImage(r["image_id"], r["sample_id"], shards[r["shard"]], r["offset"],
                                          r["stored_bytes"])
    return list(refs.values())


# ---- whole samples, byte for byte (export) ---------------------------------------------------
_BLOCK = 512


def sample_blocks(tar: BinaryIO, ref: StoredImage, ext: str) -> list[tuple[str, bytes]]:
    """Every member of the sample whose image `ref` points at, as (member name, raw tar blocks:
    header + data + padding). Ingest writes a sample's members adjacently, image first, so they
    are read from the image member's header on until the key changes."""
    key = ref.sample_id
    start = pos = ref.offset - _BLOCK
    members: list[tuple[str, bytes]] = []
    while True:
        tar.seek(pos)
        header = tar.read(_BLOCK)
        if len(header) < _BLOCK or header == b"\0" * _BLOCK:
            break
        info = tarfile.TarInfo.frombuf(header, encoding="utf-8", errors="strict")
        if not info.name.startswith(f"{key}."):
            break
        padded = info.size + (-info.size % _BLOCK)
        data = tar.read(padded)
        if len(data) != padded:
            raise OSError(f"shard ends inside member {info.name}")
        members.append((info.name, header + data))
        pos += _BLOCK + padded
    if not members or members[0][0] != f"{key}.{ext}":
        found = members[0][0] if members else "no member"
        raise OSError(f"expected member {key}.{ext} at byte {start}, found {found}")
    return members


class BlockWriter:
    """A tar made of raw member blocks copied from other tars, closed exactly as tarfile (and
    ingest's shard writer) closes one: two zero blocks, then zeros up to a whole record."""

    def __init__(self, path: Path):
        self.path = path
        self._file = io.open(path, "wb", buffering=1 << 20)
        self._pos = 0
        self.count = 0

    def add(self, blocks: list[tuple[str, bytes]]) -> None:
        for _name, raw in blocks:
            self._file.write(raw)
            self._pos += len(raw)
        self.count += 1

    def close(self) -> None:
        end = b"\0" * (2 * _BLOCK)
        end += b"\0" * (-(self._pos + len(end)) % tarfile.RECORDSIZE)
        self._file.write(end)
        self._pos += len(end)
        self._file.close()
