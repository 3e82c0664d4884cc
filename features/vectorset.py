"""Vector sets: one tower's embeddings of one modality (and one view) across several embeddings
artifacts, optionally restricted to the roles of a split, read without copying.

Embeddings are stored one artifact per (tower fingerprint, corpus, modality); consumers that
work across corpora (a kNN graph over RS-ALL, label propagation from labeled RS-ALL to unlabeled
RESISC45, OT) read a `VectorSet`:

  - `items`: one row per vector, in set order (artifact order, then part and row order), with
    `set_row`, `item_id`, `corpus`, `sample_id`, `text`, `role` (from the split; null without
    one), `embeddings_id` (the artifact it lives in) and its `part` / `row` there;
  - `row_of(item_id)` / `rows_of(ids)`: id -> set row;
  - zero-copy access: the vectors stay in the parts' memory maps. `segments()` yields
    (first set row, array) per contiguous run of one part (views of the memmaps, no copy);
    `take(rows)` gathers only the rows asked for; `matrix()` is the (n, dim) float16 matrix: the
    memmap itself when the set is one whole part, else a concatenation (made only when asked).

An item id held by several artifacts (UCM captions and UCM-CLS share all 2,100 images) appears
once, from the first artifact that holds it (`distinct=True`, the default). See docs/vector-sets.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa

from clipstore.features.items import IMAGE
from clipstore.features.vectors import VECTOR_DTYPE, Embeddings, open_embeddings
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

SPLIT_ROLES = ("labeled", "unlabeled", "val", "test")
SET_ITEMS = pa.schema([
    ("set_row", pa.int64()), ("item_id", pa.string()), ("corpus", pa.string()), ("sample_id", pa.string()),
    ("text", pa.string()), ("role", pa.string()), ("embeddings_id", pa.string()), ("part", pa.int32()),
    ("row", pa.int64()),
])


@dataclass
class Segment:
    """A run of set rows [start, start + len) stored in one part: `vectors` is a view of the
    part's memmap (a slice when the rows are contiguous there, else the part and its row list)."""

    start: int
    part: np.ndarray
    rows: slice | np.ndarray

    def __len__(self) -> int:
        if isinstance(self.rows, slice):
            return self.rows.stop - self.rows.start
        return len(self.rows)

    @property
    def vectors(self) -> np.ndarray:
        """The segment's vectors: zero-copy for a slice, a gather of just these rows otherwise."""
        return self.part[self.rows]


@dataclass
class VectorSet:
    """See the module doc."""

    modality: str
    view: int
    fingerprint: str | None
    artifacts: list[Artifact]
    items: pa.Table
    segments_: list[Segment]
    dim: int
    restriction: dict = field(default_factory=dict)   # {"split", "split_artifact", "roles"} when restricted
    _index: dict | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.items.num_rows

    @property
    def ids(self) -> np.ndarray:
        return np.asarray(self.items.column("item_id").to_pylist(), dtype=object)

    @property
    def corpora(self) -> list[str]:
        return sorted({c for c in self.items.column("corpus").to_pylist() if c is not None})

    def row_of(self, item_id: str) -> int | None:
        if self._index is None:
            self._index = {item: i for i, item in enumerate(self.items.column("item_id").to_pylist())}
        return self._index.get(item_id)

    def rows_of(self, item_ids) -> np.ndarray:
        """Set rows of these ids; -1 for an id the set does not hold."""
        return np.asarray([-1 if (r := self.row_of(i)) is None else r for i in item_ids], dtype=np.int64)

    def segments(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first set row, vectors) per segment, in set order; contiguous runs are memmap views."""
        for seg in self.segments_:
            yield seg.start, seg.vectors

    def take(self, rows) -> np.ndarray:
        """The vectors of these set rows, (len(rows), dim) float16; only they are read."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=VECTOR_DTYPE)
        if not len(rows):
            return out
        starts = np.asarray([s.start for s in self.segments_], dtype=np.int64)
        which = np.searchsorted(starts, rows, side="right") - 1
        for w in np.unique(which):
            seg, mask = self.segments_[w], which == w
            local = rows[mask] - seg.start
            part_rows = (np.arange(seg.rows.start, seg.rows.stop)[local] if isinstance(seg.rows, slice)
                         else seg.rows[local])
            out[mask] = seg.part[part_rows]
        return out

    def matrix(self) -> np.ndarray:
        """All vectors, (n, dim) float16: the memmap itself when the set is one whole part, else a
        concatenation (a copy: ask for it only when one matrix is needed, e.g. a kNN search)."""
        if len(self.segments_) == 1:
            seg = self.segments_[0]
            if isinstance(seg.rows, slice) and seg.rows == slice(0, len(seg.part)):
                return seg.part
        if not self.segments_:
            return np.zeros((0, self.dim), dtype=VECTOR_DTYPE)
        return np.concatenate([seg.vectors for seg in self.segments_], axis=0)


# ---- building sets ----------------------------------------------------------------------------
def vector_set(store: Store, embeddings: list[str | Artifact], *, modality: str = IMAGE, view: int = 0,
               split: str | None = None, roles: list[str] | tuple[str, ...] | None = None,
               distinct: bool = True) -> VectorSet:
    """The vectors of `modality` (and `view`) in these embeddings artifacts (ids, names or
    artifacts), in that order. With `split`, only items of that split's samples (of `roles`, all
    by default): images match the split's (corpus, image_id), other modalities its (corpus,
    sample_id); each item carries its role. All artifacts must share one tower fingerprint."""
    arts = [_embeddings_artifact(store, e) for e in embeddings]
    if not arts:
        raise InputError("a vector set needs at least one embeddings artifact",
                         fix="embed the corpora first: clipstore embed --model M --corpus C")
    fingerprints = {a.params.get("fingerprint") for a in arts}
    if len(fingerprints) > 1:
        listed = ", ".join(f"{a.name} ({str(a.params.get('fingerprint'))[:12]})" for a in arts)
        raise InputError(f"a vector set holds one tower's vectors; these artifacts come from "
                         f"{len(fingerprints)} different ones: {listed}",
                         fix="pick embeddings made by one model (same fingerprint)")
    keep, restriction = (None, {}) if split is None else _split_keys(store, split, roles, modality)
    parts = store.all_parts([a.artifact_id for a in arts])
    tables, segments, seen, n, dim = [], [], set(), 0, None
    for art in arts:
        emb = open_embeddings(store, art, parts)
        dim = dim or emb.dim or None
        table, art_segments = _select(emb, modality, view, keep, seen if distinct else None, n)
        tables.append(table)
        segments += art_segments
        n += table.num_rows
    items = pa.concat_tables(tables) if tables else SET_ITEMS.empty_table()
    return VectorSet(modality, view, fingerprints.pop(), arts, items, segments, int(dim or 0), restriction)


def _embeddings_artifact(store: Store, ref: str | Artifact) -> Artifact:
    art = ref if isinstance(ref, Artifact) else store.get(ref, kind="embeddings")
    if art.kind != "embeddings":
        raise InputError(f"{art.artifact_id} is a {art.kind} artifact, not embeddings",
                         fix="pass ids from `clipstore ls --kind embeddings`")
    return art


def _split_keys(store: Store, split: str, roles, modality: str) -> tuple[dict, dict]:
    """(corpus, key) -> role for the split's rows of these roles; key = image_id for images."""
    roles = list(roles or SPLIT_ROLES)
    unknown = [r for r in roles if r not in SPLIT_ROLES]
    if unknown:
        raise InputError(f"unknown split role {', '.join(unknown)}", fix=f"use some of {', '.join(SPLIT_ROLES)}")
    art = store.current("split", split)
    if art is None:
        have = ", ".join(sorted(a.name for a in store.current_all("split"))) or "none yet"
        raise NotFoundError(f"no split {split!r} in the store (splits: {have})", where=str(store.root),
                            fix="make it first: clipstore split NAME --corpus A ...")
    key = "image_id" if modality == IMAGE else "sample_id"
    with Session(store) as session:
        rows = session.query(f"SELECT role, corpus, {key} AS k FROM splits WHERE split = $split AND "
                             "list_contains($roles, role) AND k IS NOT NULL", {"split": split, "roles": roles})
    keys: dict[tuple[str, str], str] = {}
    order = {r: i for i, r in enumerate(SPLIT_ROLES)}
    for role, corpus, k in sorted(zip(*(rows.column(c).to_pylist() for c in ("role", "corpus", "k"))),
                                  key=lambda r: order[r[0]]):
        keys.setdefault((corpus, k), role)       # an image in two roles (a leak) keeps the first in role order
    restriction = {"split": split, "split_artifact": art.artifact_id, "roles": roles}
    return keys, restriction


def _select(emb: Embeddings, modality: str, view: int, keep: dict | None, seen: set | None,
            first_row: int) -> tuple[pa.Table, list[Segment]]:
    items = emb.items
    cols = {c: items.column(c).to_pylist() for c in ("item_id", "modality", "view", "corpus", "sample_id",
                                                     "part", "row")}
    key_col = "item_id" if modality == IMAGE else "sample_id"
    chosen, roles = [], []
    for i in range(items.num_rows):
        if cols["modality"][i] != modality or cols["view"][i] != view:
            continue
        role = None
        if keep is not None:
            role = keep.get((cols["corpus"][i], cols[key_col][i]))
            if role is None:
                continue
        if seen is not None:
            if cols["item_id"][i] in seen:
                continue
            seen.add(cols["item_id"][i])
        chosen.append(i)
        roles.append(role)
    idx = pa.array(chosen, pa.int64())
    picked = items.take(idx)
    n = len(chosen)
    table = pa.table({"set_row": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
                      "item_id": picked.column("item_id"), "corpus": picked.column("corpus"),
                      "sample_id": picked.column("sample_id"), "text": picked.column("text"),
                      "role": pa.array(roles, pa.string()),
                      "embeddings_id": pa.array([emb.artifact.artifact_id] * n, pa.string()),
                      "part": picked.column("part"), "row": picked.column("row")}, schema=SET_ITEMS)
    return table, _segments(emb, [cols["part"][i] for i in chosen], [cols["row"][i] for i in chosen], first_row)


def _segments(emb: Embeddings, parts: list[int], rows: list[int], first_row: int) -> list[Segment]:
    """Group consecutive set rows by part; a run of consecutive part rows becomes a slice."""
    by_number = _part_arrays(emb)
    out: list[Segment] = []
    start = 0
    while start < len(parts):
        end = start
        while end + 1 < len(parts) and parts[end + 1] == parts[start]:
            end += 1
        local = np.asarray(rows[start:end + 1], dtype=np.int64)
        contiguous = bool((np.diff(local) == 1).all()) if len(local) > 1 else True
        sel = slice(int(local[0]), int(local[-1]) + 1) if contiguous else local
        out.append(Segment(first_row + start, by_number[parts[start]], sel))
        start = end + 1
    return out


def _part_arrays(emb: Embeddings) -> dict[int, np.ndarray]:
    """Part number -> its memmap (parts are listed in part order in both tables)."""
    numbers = sorted(set(emb.items.column("part").to_pylist()))
    if len(numbers) != len(emb.parts):
        raise InputError(f"embeddings {emb.artifact.artifact_id}: {len(numbers)} item parts but "
                         f"{len(emb.parts)} vector parts", fix="re-run the embed command to finish the artifact")
    return dict(zip(numbers, emb.parts))


def find_embeddings(store: Store, fingerprint: str, modality: str = IMAGE, corpora: list[str] | None = None,
                    views: dict | None = None) -> list[Artifact]:
    """Current embeddings artifacts of one tower fingerprint and modality (of these corpora, in
    that order, when given); `views` None = the plain view caches."""
    found = [a for a in store.current_all("embeddings") if a.params.get("fingerprint") == fingerprint
             and a.params.get("modality") == modality and a.params.get("views") == views]
    if corpora is None:
        return found
    by_corpus = {a.params.get("corpus"): a for a in found}
    missing = [c for c in corpora if c not in by_corpus]
    if missing:
        raise NotFoundError(f"no {modality} embeddings of {', '.join(missing)} for fingerprint {fingerprint[:12]}",
                            where=str(store.root), fix="embed them first: clipstore embed --model M --corpus C")
    return [by_corpus[c] for c in corpora]
