"""What a source adapter yields: one SourceRecord per entry of the source, or a Reject when the
entry itself is unusable. The engine turns records into shards and table rows."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clipstore.warehouse.hashing import content_id


@dataclass(frozen=True)
class ImageRef:
    """Where an entry's image bytes live: a file, an array row in an HDF5 file, or inline bytes."""

    path: Path | None = None
    h5: tuple[str, str, int] | None = None   # (file, dataset, row)
    data: bytes | None = None

    def state(self) -> str:
        """Cheap fingerprint telling whether the bytes may have changed since the last ingest."""
        if self.path is not None:
            st = os.stat(self.path)
            return f"file:{st.st_size}:{st.st_mtime_ns}"
        if self.h5 is not None:
            st = os.stat(self.h5[0])
            return f"h5:{st.st_size}:{st.st_mtime_ns}:{self.h5[1]}:{self.h5[2]}"
        return f"bytes:{content_id(self.data or b'')}"

    def describe(self) -> str:
        if self.path is not None:
            return str(self.path)
        if self.h5 is not None:
            return f"{self.h5[0]}:{self.h5[1]}[{self.h5[2]}]"
        return "inline bytes"


@dataclass
class SourceRecord:
    """One entry of a source: a key unique within the corpus, its image (None when the source
    names an image that is not on disk, with `missing` saying why) and its captions, verbatim."""

    source_key: str
    image: ImageRef | None
    captions: list[str] = field(default_factory=list)
    split: str | None = None
    label: str | None = None
    meta: dict = field(default_factory=dict)
    missing: str | None = None


@dataclass
class Reject:
    """An entry that cannot become a sample, with the reason a user can act on."""

    source_key: str
    reason: str
    stage: str = "parse"
