"""Reading images back out of a corpus's shard tars, for every stage that needs pixels (embed,
the trainer, the Python dataset). The `images` table records each stored image's shard and the
byte offset and size of its member's data, so one image costs one seek and one read."""

from __future__ import annotations

import io
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
