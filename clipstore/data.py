"""Samples of a split role or a whole corpus, read straight from the store's shards: a torch
`IterableDataset` of decoded samples, and its conversion to a Hugging Face `datasets.Dataset`.

    from clipstore.data import open as open_data
    ds = open_data("store", split="rs_all", role="labeled")   # or corpus="ucm_captions"
    for sample in ds: ...     # {"sample_id", "image_id", "image", "captions", "class", "class_index", "corpus"}

Only samples with a stored image are yielded (a caption-only sample has no pixels); `ds.skipped`
says how many a corpus has. The order is fixed: a split role in manifest order, a corpus in shard
order. Each DataLoader worker (and each distributed rank) reads its own source shards, so no
sample is read twice. Everything is read through the warehouse (catalog, SQL views, shards)."""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.shards import StoredImage, decode, read_bytes
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

HF_EXTRA = "hf"


@dataclass(frozen=True)
class SampleRef:
    """One sample to read: where its image sits and what the tables say about it."""

    corpus: str
    image: StoredImage
    ext: str
    captions: tuple[str, ...]
    label: str | None
    class_index: int | None

    @property
    def sample_id(self) -> str:
        return self.image.sample_id


@dataclass(frozen=True)
class Selection:
    """The samples of one request, in order, with what the request was and what it read."""

    label: str                      # "rs_all.labeled" or "ucm_captions"
    request: dict                   # {"split", "role"} or {"corpus"}
    samples: list[SampleRef]
    inputs: dict[str, Artifact]     # corpus name / "split:<name>" -> artifact
    versions: dict[str, str]        # artifact id -> digest of its committed parts
    skipped: int = 0                # samples without a stored image (caption-only)


def select(store: Store | str | Path, *, split: str | None = None, role: str | None = None,
           corpus: str | None = None) -> Selection:
    """Resolve `split` + `role`, or `corpus`, to the samples it holds."""
    store = store if isinstance(store, Store) else Store(store, create=False)
    if bool(split) == bool(corpus):
        raise InputError("say which samples: split=NAME with role=ROLE, or corpus=NAME",
                         fix="e.g. --split rs_all --role labeled, or --corpus ucm_captions")
    if role and not split:
        raise InputError(f"role {role!r} needs a split", fix="add --split NAME, or drop --role for a whole corpus")
    with Session(store) as session:
        if split:
            return _select_role(store, session, split, role)
        return _select_corpus(store, session, corpus)


def _select_role(store: Store, session: Session, split: str, role: str | None) -> Selection:
    art = store.current("split", split)
    if art is None:
        have = ", ".join(a.name for a in store.current_all("split")) or "none yet"
        raise NotFoundError(f"no split {split!r} in the store (splits: {have})", where=str(store.root),
                            fix="build it: clipstore split NAME --corpus A ... --labeled-ratio R --seed S")
    roles = sorted(r for r, n in art.counts.items() if isinstance(n, int))
    if not role:
        raise InputError(f"split {split!r} given without a role", fix=f"add --role ({'|'.join(roles)})")
    if role not in roles:
        raise InputError(f"split {split!r} has no role {role!r}", fix=f"use one of: {', '.join(roles)}")
    rows = session.query(
        'SELECT s.corpus, s.sample_id, i.image_id, i.shard, i."offset", i.stored_bytes, i.stored_ext, '
        "m.class, m.class_index FROM splits s "
        "LEFT JOIN images i ON i.sample_id = s.sample_id AND i.corpus = s.corpus "
        "LEFT JOIN samples m ON m.sample_id = s.sample_id AND m.corpus = s.corpus "
        "WHERE s.split = $split AND s.role = $role ORDER BY s.position, s.corpus, s.sample_id",
        {"split": split, "role": role}).to_pylist()
    gone = [r["sample_id"] for r in rows if r["image_id"] is None]
    if gone:
        raise InputError(f"{len(gone)} of the {len(rows)} samples of {split}.{role} no longer have a stored image "
                         f"(e.g. {gone[0]}): the split is older than its corpora",
                         where=str(store.root), fix=f"rebuild the split (clipstore split {split} ...)")
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    inputs = {f"split:{split}": art, **store.corpora(corpora)}
    samples = _refs(store, session, inputs, rows)
    return Selection(f"{split}.{role}", {"split": split, "role": role}, samples, inputs,
                     store.version_digests(sorted(a.artifact_id for a in inputs.values())))


def _select_corpus(store: Store, session: Session, corpus: str) -> Selection:
    inputs = store.corpora([corpus])
    tables = session.tables()
    if "images" not in tables:
        rows, total = [], 0
    else:
        rows = session.query(
            'SELECT i.corpus, i.sample_id, i.image_id, i.shard, i."offset", i.stored_bytes, i.stored_ext, '
            "m.class, m.class_index FROM images i JOIN samples m ON m.sample_id = i.sample_id AND m.corpus = i.corpus "
            'WHERE i.corpus = $corpus ORDER BY i.shard, i."offset"', {"corpus": corpus}).to_pylist()
        total = session.query("SELECT count(*) AS n FROM samples WHERE corpus = $corpus",
                              {"corpus": corpus}).to_pylist()[0]["n"]
    samples = _refs(store, session, inputs, rows)
    return Selection(corpus, {"corpus": corpus}, samples, inputs,
                     store.version_digests(sorted(a.artifact_id for a in inputs.values())),
                     skipped=total - len(samples))


def _refs(store: Store, session: Session, inputs: dict[str, Artifact], rows: list[dict]) -> list[SampleRef]:
    corpora = sorted({r["corpus"] for r in rows})
    shards: dict[tuple[str, str], Path] = {}
    for name in corpora:
        art = inputs[name]
        for p in session.query("SELECT path FROM parts WHERE artifact_id = $id AND table_name = 'shards'",
                               {"id": art.artifact_id}).column("path").to_pylist():
            shards[(name, Path(p).name)] = store.root / p
    captions: dict[str, list[str]] = defaultdict(list)
    if corpora:
        for r in session.query("SELECT sample_id, raw FROM captions WHERE list_contains($corpora, corpus) "
                               "ORDER BY sample_id, ordinal", {"corpora": corpora}).to_pylist():
            captions[r["sample_id"]].append(r["raw"])
    refs = []
    for r in rows:
        path = shards.get((r["corpus"], r["shard"]))
        if path is None:
            raise NotFoundError(f"shard {r['shard']} of corpus {r['corpus']} is not in the store",
                                where=str(inputs[r["corpus"]].path), fix="re-ingest the corpus")
        image = StoredImage(r["image_id"], r["sample_id"], path, r["offset"], r["stored_bytes"])
        refs.append(SampleRef(r["corpus"], image, r["stored_ext"], tuple(captions.get(r["sample_id"], ())),
                              r["class"], r["class_index"]))
    return refs


def open(store: Store | str | Path, *, split: str | None = None, role: str | None = None,  # noqa: A001
         corpus: str | None = None, transform: Callable[[Image.Image], Any] | None = None) -> "ClipstoreDataset":
    """The samples of `split`/`role` or of `corpus` as a torch IterableDataset; `transform` maps
    each RGB PIL image (e.g. open_clip's preprocess, giving a tensor)."""
    return ClipstoreDataset(select(store, split=split, role=role, corpus=corpus), transform)


class ClipstoreDataset(IterableDataset):
    """Decoded samples, worker- and rank-sharded by source shard. Batch with
    `DataLoader(ds, batch_size=B, collate_fn=clipstore.data.collate)`."""

    def __init__(self, selection: Selection, transform: Callable[[Image.Image], Any] | None = None):
        super().__init__()
        self.selection, self.transform = selection, transform

    @property
    def samples(self) -> list[SampleRef]:
        return self.selection.samples

    @property
    def skipped(self) -> int:
        return self.selection.skipped

    @property
    def shards(self) -> list[Path]:
        """The source shards read, in first-use order: the unit each worker takes."""
        return list(dict.fromkeys(r.image.shard for r in self.samples))

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"ClipstoreDataset({self.selection.label}: {len(self)} samples in {len(self.shards)} shards)"

    def refs_for(self, index: int, count: int) -> list[SampleRef]:
        """The samples reader `index` of `count` reads: those in every count-th source shard."""
        mine = set(self.shards[index::count])
        return [r for r in self.samples if r.image.shard in mine]

    def __iter__(self) -> Iterator[dict]:
        index, count = _reader_slot()
        handles: dict[Path, Any] = {}
        try:
            for ref in self.refs_for(index, count):
                tar = handles.get(ref.image.shard)
                if tar is None:
                    tar = handles[ref.image.shard] = io.open(ref.image.shard, "rb")
                image = decode(tar, ref.image)
                yield {"sample_id": ref.sample_id, "image_id": ref.image.image_id,
                       "image": self.transform(image) if self.transform else image,
                       "captions": list(ref.captions), "class": ref.label, "class_index": ref.class_index,
                       "corpus": ref.corpus}
        finally:
            for tar in handles.values():
                tar.close()

    def to_hf(self):
        """A Hugging Face `datasets.Dataset` of the same samples, in the same order: `image` (an
        Image feature holding the stored bytes, decoded on access), `captions`, `class`,
        `class_index`, `corpus`, `sample_id`, `image_id`. Built in memory."""
        try:
            import datasets
        except ImportError:
            raise ClipstoreError("to_hf() needs the Hugging Face `datasets` package, which is not installed",
                                 fix=f"pip install 'clipstore[{HF_EXTRA}]' (or pip install datasets)") from None
        columns: dict[str, list] = {"sample_id": [], "image_id": [], "image": [], "captions": [], "class": [],
                                    "class_index": [], "corpus": []}
        handles: dict[Path, Any] = {}
        try:
            for ref in self.samples:
                tar = handles.get(ref.image.shard)
                if tar is None:
                    tar = handles[ref.image.shard] = io.open(ref.image.shard, "rb")
                columns["image"].append({"bytes": read_bytes(tar, ref.image), "path": f"{ref.sample_id}.{ref.ext}"})
                for key, value in (("sample_id", ref.sample_id), ("image_id", ref.image.image_id),
                                   ("captions", list(ref.captions)), ("class", ref.label),
                                   ("class_index", ref.class_index), ("corpus", ref.corpus)):
                    columns[key].append(value)
        finally:
            for tar in handles.values():
                tar.close()
        features = datasets.Features({
            "sample_id": datasets.Value("string"), "image_id": datasets.Value("string"), "image": datasets.Image(),
            "captions": datasets.Sequence(datasets.Value("string")), "class": datasets.Value("string"),
            "class_index": datasets.Value("int32"), "corpus": datasets.Value("string")})
        return datasets.Dataset.from_dict(columns, features=features)


def _reader_slot() -> tuple[int, int]:
    """(index, count) of this reader among all DataLoader workers of all distributed ranks."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


def collate(batch: list[dict]) -> dict:
    """Batch samples for a DataLoader: tensors are stacked, everything else becomes a list (captions
    differ in number per sample, which torch's default collate refuses)."""
    out = {}
    for key in batch[0]:
        values = [s[key] for s in batch]
        out[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return out
