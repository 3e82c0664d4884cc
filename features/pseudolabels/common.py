"""The shared core of the pseudo-label producers: resolve a split's vectors, write through one
produce wrapper with lineage and an audit, refuse bad input before anything is written.

API (everything a producer module needs):

  resolve_vectors(store, split=, model= | embeddings=, ...) -> SplitVectors
      The image vectors of a split's labeled and unlabeled roles, from `model` (a ModelSpec, a
      checkpoint artifact id, or a LoadedModel: what the split's corpora lack is embedded
      first, through the cache) or from named `embeddings` artifacts (one image tower). Val and
      test images are never in `unlabeled` (an image also in val/test is left out, counted).
      Refuses: no such split, no labeled / unlabeled images, several towers mixed, images
      without a vector, NaN/Inf vectors. `SplitVectors.labeled` / `.unlabeled` are `Side`s:
      `items` (item_id = image_id, corpus, sample_id, embeddings_id, part, row), `vectors`
      (float32, unit rows), `digest` (what the rows and their stored bytes are);
      `.lineage()` the lineage values of rows made from them, `.recipe()` what pins them in a
      recipe (split name, tower, labeled and unlabeled digests: drop `unlabeled` to be incremental).
  sample_captions(store, keys) -> {(corpus, sample_id): [caption_id, ...]}   (ordinal order)
  classes_by_sample(store, corpora) -> {sample_id: class}                     (the truth)
  check_pool(k, pool, what)     "k larger than the pool" as an InputError naming the fix.
  logit_scale(given, model's)   --logit-scale, else the model's, else 100 (ε = 1/s for OT).
  produce_pseudolabels(store, producer=, name=, params=, tables=, lineage=, build=, wanted=, ...)
      The produce wrapper (inside the writer lock): the recipe is the producer's params plus
      TABLES_VERSION; `inputs` are pinned by version, `sources` recorded as lineage only.
      `build(run)` computes and calls `run.write({table: arrow table})` once per part (and may
      put figures into `run.stats`); the wrapper fills the LINEAGE columns (tables.py) the table
      does not carry itself (a per-row `embeddings_ids` column, say, wins over `lineage`).
      Recipe-pinned (wanted=None): a completed recipe is a no-op, nothing read. Incremental
      (wanted = the key values, e.g. unlabeled image ids, that should have rows): `run.todo`
      holds only those the artifact lacks; none -> a no-op run; a committed key no longer
      wanted -> every part is retired and all are recomputed. After `build`, the audit
      (audit.py: AUDITS by table) runs over all rows: its summary goes into stats["audit"], its
      calibration rows into the `pseudo_calibration` table.
  pseudolabel_artifact(store, ref, table=), read_table(store, art, table)   read an artifact back.
  entropy(p), top_k(p, k), caption_rows(...), default_name(split, producer, model)   row helpers.

CLI: each module of this package that defines `add_parser(sub, cli)` (and optionally an int
`CLI_ORDER`) gets its `clipstore pseudolabel NAME` subcommand: clipstore/cli_pseudolabel.py
discovers them (`producer_modules()` in __init__.py), no shared file lists them; `cli` is that
module, with the shared helpers (`add_vector_options`, `vector_kwargs`, `model_spec`, `store`,
`done`). Audits:
audit.py's `register_audit(table)` decorator. See docs/pseudolabels.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from clipstore.features.items import IMAGE
from clipstore.features.vectorset import vector_set
from clipstore.features.pseudolabels.tables import (LINEAGE, LINEAGE_NAMES, PSEUDO_CALIBRATION, TABLES_VERSION,
                                                     declare)
from clipstore.warehouse.errors import ClipstoreError, InputError, NotFoundError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.parquet import commit_part_tables, read_parquet
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store

KIND = "pseudolabels"
STAGE_VERSION = 1          # bump when the same inputs and parameters would give other rows
DEFAULT_LOGIT_SCALE = 100.0   # CLIP's trained logit scale (ε = 0.01) when the model is not known
ROWS_PER_PART = 50_000


# ---- resolved vectors -------------------------------------------------------------------------------
@dataclass
class Side:
    """One role's images: items (a VectorSet's columns), their float32 unit vectors, a digest of
    exactly which stored vectors they are (item id, part file sha256, row)."""

    items: pa.Table
    vectors: np.ndarray
    digest: str

    def __len__(self) -> int:
        return self.items.num_rows

    def column(self, name: str) -> list:
        return self.items.column(name).to_pylist()

    @property
    def keys(self) -> list[tuple[str, str]]:
        """(corpus, sample_id) per row."""
        return list(zip(self.column("corpus"), self.column("sample_id")))


@dataclass
class SplitVectors:
    split: Artifact
    embeddings: list[Artifact]
    tower_fingerprint: str
    model_fingerprint: str | None
    model_name: str
    logit_scale: float | None          # the model's own, when it is known (--model)
    labeled: Side
    unlabeled: Side
    excluded: dict = field(default_factory=dict)   # unlabeled images left out, by reason

    @property
    def embeddings_ids(self) -> list[str]:
        return [a.artifact_id for a in self.embeddings]

    def lineage(self) -> dict:
        """The lineage values shared by every row made from these vectors."""
        return {"split_id": self.split.artifact_id, "embeddings_ids": self.embeddings_ids,
                "model_fingerprint": self.model_fingerprint, "tower_fingerprint": self.tower_fingerprint}

    def recipe(self) -> dict:
        """What identifies the vectors in a recipe (the unlabeled digest only for recipe-pinned producers)."""
        return {"split": self.split.name, "tower_fingerprint": self.tower_fingerprint,
                "labeled": self.labeled.digest, "unlabeled": self.unlabeled.digest}


def resolve_vectors(store: Store, *, split: str, model=None, embeddings: list[str] | None = None,
                    batch_size: int = 64, workers: int | None = None, wait: bool = False,
                    progress: bool = True) -> SplitVectors:
    """See the module doc. Call outside `store.writing()`: embedding takes the writer lock itself."""
    if (model is None) == (not embeddings):
        raise InputError("pseudo-labels need the vectors of one model: pass --model SPEC or --embeddings ID",
                         fix="e.g. --model tiny-vit (embeds what is missing), or --embeddings ID (repeatable)")
    split_art = _split(store, split)
    counts = split_art.counts or {}
    if not counts.get("labeled"):
        raise InputError(f"split {split!r} has no labeled images: there is nothing to propagate labels from",
                         where=split_art.artifact_id,
                         fix="make a split with labeled images: clipstore split NAME --corpus C --labeled-ratio 0.1 "
                             "--seed 0 (the captioned corpora go in --corpus)")
    if not counts.get("unlabeled"):
        raise InputError(f"split {split!r} has no unlabeled images: there is nothing to pseudo-label",
                         where=split_art.artifact_id,
                         fix="use a split with unlabeled images (--labeled-ratio below 1, or --unlabeled-corpus C)")
    if model is not None:
        arts, tower, model_fp, name, scale = _embed_split(store, split, model, batch_size, workers, wait, progress)
    else:
        arts, tower, model_fp, name = _named_embeddings(store, embeddings)
        scale = None
    roles = _split_roles(store, split_art)
    vset = vector_set(store, arts, modality=IMAGE, split=split, roles=["labeled", "unlabeled"])
    role = np.asarray(vset.items.column("role").to_pylist(), dtype=object)
    ids = vset.items.column("item_id").to_pylist()
    in_eval = np.asarray([i in roles["eval"] for i in ids], dtype=bool)
    labeled_rows = np.flatnonzero(role == "labeled")
    unlabeled_rows = np.flatnonzero((role == "unlabeled") & ~in_eval)
    excluded = {"unlabeled_also_in_val_or_test": int(((role == "unlabeled") & in_eval).sum())}
    for which, rows in (("labeled", labeled_rows), ("unlabeled", unlabeled_rows)):
        missing = roles[which] - {ids[r] for r in rows} - (roles["eval"] if which == "unlabeled" else set())
        if missing:
            listed = ", ".join(a.name for a in arts)
            raise InputError(f"{len(missing)} of the {len(roles[which])} {which} images of split {split!r} have no "
                             f"vector in the embeddings given ({listed})", where=split_art.artifact_id,
                             fix="pass --model SPEC to embed what is missing, or embed it first: clipstore embed "
                                 f"--split {split} --model M")
    shas = _vector_part_shas(store, [a.artifact_id for a in arts])
    sides = [_side(vset, rows, f"{which} images of split {split!r}", shas)
             for which, rows in (("labeled", labeled_rows), ("unlabeled", unlabeled_rows))]
    return SplitVectors(split_art, arts, tower, model_fp, name, scale, sides[0], sides[1], excluded)


def _split(store: Store, split: str) -> Artifact:
    art = store.current("split", split)
    if art is None:
        have = ", ".join(sorted(a.name for a in store.current_all("split"))) or "none yet"
        raise NotFoundError(f"no split {split!r} in the store (splits: {have})", where=str(store.root),
                            fix="make it first: clipstore split NAME --corpus A --labeled-ratio R --seed S")
    return art


def _split_roles(store: Store, split: Artifact) -> dict[str, set[str]]:
    """Image ids per role of the split version; `eval` = val and test together (read from its
    own table file: a split is one part, nothing supersedes its rows)."""
    rows = read_parquet(store.table_paths(split, "splits"), columns=["role", "image_id"])
    out: dict[str, set[str]] = {"labeled": set(), "unlabeled": set(), "eval": set()}
    for role, image in zip(rows.column("role").to_pylist(), rows.column("image_id").to_pylist()):
        if image is not None:
            out["eval" if role in ("val", "test") else role].add(image)
    out["unlabeled"] -= out["labeled"]     # an image in both is labeled (vector sets resolve it the same way)
    return out


def _embed_split(store: Store, split: str, model, batch_size: int, workers, wait: bool, progress: bool):
    from clipstore.features.checkpoint_artifacts import resolve_model_spec
    from clipstore.features.embed import embed
    from clipstore.features.models import LoadedModel, load_model
    loaded = model if isinstance(model, LoadedModel) else load_model(resolve_model_spec(store, model))
    arts = embed(store, model=loaded, split=split, modality="image", batch_size=batch_size, workers=workers,
                 wait=wait, progress=progress)
    scale = getattr(loaded.model, "logit_scale", None)
    scale = float(scale.detach().exp().reshape(-1)[0]) if scale is not None else None
    return arts, loaded.image_fingerprint, loaded.fingerprint, loaded.name, scale


def _named_embeddings(store: Store, refs: list[str]):
    arts = [store.get(r, kind="embeddings") for r in dict.fromkeys(refs)]
    not_images = [a.name for a in arts if a.params.get("modality") != IMAGE or a.params.get("views") is not None]
    if not_images:
        raise InputError(f"pseudo-labels are made from plain image embeddings; not such: {', '.join(not_images)}",
                         fix="pass image embeddings artifacts (`clipstore ls --kind embeddings`: *.image.*)")
    towers = Counter(a.params.get("fingerprint") for a in arts)
    if len(towers) > 1:
        listed = "; ".join(f"{a.name} (tower {str(a.params.get('fingerprint'))[:12]}, model {a.stats.get('model')})"
                           for a in arts)
        raise InputError(f"the embeddings come from {len(towers)} different image towers: {listed}",
                         fix="pass embeddings of one model only (same tower fingerprint), or --model SPEC to use "
                             "(and fill) that model's caches")
    model_fps = {a.stats.get("model_fingerprint") for a in arts}
    names = {a.stats.get("model") for a in arts}
    tower = towers.most_common(1)[0][0]
    name = names.pop() if len(names) == 1 and None not in names else str(tower)[:12]
    return arts, tower, model_fps.pop() if len(model_fps) == 1 else None, name


def _side(vset, rows: np.ndarray, what: str, shas: dict) -> Side:
    items = vset.items.take(pa.array(rows, pa.int64()))
    vectors = np.asarray(vset.take(rows), dtype=np.float32)
    check_finite(vectors, items, what)
    return Side(items, vectors, vectors_digest(None, items, shas))


def check_finite(vectors: np.ndarray, items: pa.Table, what: str) -> None:
    """NaN/Inf vectors would give NaN similarities and plans: refuse them, naming where they are."""
    bad = ~np.isfinite(vectors).all(axis=1) if len(vectors) else np.zeros(0, bool)
    if bad.any():
        arts = sorted(set(np.asarray(items.column("embeddings_id").to_pylist(), dtype=object)[bad]))
        raise InputError(f"{int(bad.sum())} of the {len(vectors)} {what} have NaN or infinite vectors",
                         where=", ".join(arts), fix="re-embed with a healthy model (clipstore embed ...), or pass "
                                                   "--model SPEC to use another model's caches")


def _vector_part_shas(store: Store, embeddings_ids: list[str]) -> dict[tuple[str, int], str]:
    with store.connect() as con:
        rows = con.execute("SELECT artifact_id, part, sha256 FROM parts WHERE table_name = 'vectors' "
                           "AND NOT retired AND artifact_id IN (SELECT unnest(?))", [sorted(embeddings_ids)]).fetchall()
    return {(a, p): s for a, p, s in rows}


def vectors_digest(store: Store | None, items: pa.Table, shas: dict | None = None) -> str:
    """Which stored vectors these are: (item id, sha256 of its part file, row) per item. Parts are
    immutable, so the digest changes exactly when one of these vectors does, not when the cache
    grows with others. `shas` (part sha256 by (embeddings id, part)) saves the catalog read."""
    sha = shas if shas is not None else _vector_part_shas(store, list(set(items.column("embeddings_id").to_pylist())))
    triples = sorted(zip(items.column("item_id").to_pylist(),
                         (sha.get(k) for k in zip(items.column("embeddings_id").to_pylist(),
                                                  items.column("part").to_pylist())),
                         items.column("row").to_pylist()))
    return digest(triples)


# ---- truth and captions from the corpora -----------------------------------------------------------
def _by_corpus(keys) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for corpus, sample in keys:
        out.setdefault(corpus, set()).add(sample)
    return out


def sample_captions(store: Store, keys) -> dict[tuple[str, str], list[str]]:
    """(corpus, sample_id) -> its caption ids in ordinal order ([] for a sample without captions)."""
    wanted = _by_corpus(keys)
    out = {(c, s): [] for c, samples in wanted.items() for s in samples}
    if not wanted:
        return out
    with Session(store) as session:
        if "captions" not in session.tables():
            return out
        rows = session.query("SELECT corpus, sample_id, caption_id FROM captions WHERE list_contains($corpora, corpus) "
                             "ORDER BY corpus, sample_id, ordinal", {"corpora": sorted(wanted)})
    for corpus, sample, caption in zip(*(rows.column(c).to_pylist() for c in ("corpus", "sample_id", "caption_id"))):
        if sample in wanted[corpus]:
            out[(corpus, sample)].append(caption)
    return out


def classes_by_sample(store: Store, corpora: list[str]) -> dict[str, str]:
    """sample_id -> class for the samples of these corpora that have one (sample ids are unique
    across corpora)."""
    if not corpora:
        return {}
    with Session(store) as session:
        rows = session.query('SELECT sample_id, "class" FROM samples WHERE list_contains($corpora, corpus) '
                             'AND "class" IS NOT NULL', {"corpora": sorted(corpora)})
    return dict(zip(rows.column("sample_id").to_pylist(), rows.column("class").to_pylist()))


def logit_scale(given: float | None, model_scale: float | None) -> float:
    """The logit scale s to use: --logit-scale, else the model's own, else CLIP's trained 100."""
    import math
    scale = given if given is not None else (model_scale if model_scale is not None else DEFAULT_LOGIT_SCALE)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise InputError(f"the logit scale must be a positive number, got {scale!r}", fix="e.g. --logit-scale 100")
    return float(scale)


def check_pool(k: int, pool: int, what: str, option: str = "--top") -> None:
    if not isinstance(k, int) or k < 1:
        raise InputError(f"{option} must be a positive integer, got {k!r}", fix=f"e.g. {option} 5")
    if k > pool:
        raise InputError(f"{option} {k} is larger than the pool: {what} has only {pool}",
                         fix=f"pass {option} {pool} or less, or a split with more labeled images")


# ---- the produce wrapper --------------------------------------------------------------------------
@dataclass
class Run:
    """What `build` gets: the builder, the keys still to compute (`todo`, in wanted order; None
    for a recipe-pinned producer: everything), and `write` for one part of rows."""

    builder: ArtifactBuilder
    producer: str
    schemas: dict[str, pa.Schema]
    lineage: dict
    todo: list[str] | None
    incremental: bool
    stats: dict = field(default_factory=dict)     # the producer's own stats (merged into the artifact's)
    _next: int = 0

    @property
    def artifact_id(self) -> str:
        return self.builder.artifact_id

    def write(self, tables: dict[str, pa.Table]) -> None:
        """Commit one part holding these tables (their own columns; missing lineage columns are
        filled). Recipe-pinned producers write deterministic parts 0, 1, ...: a part a killed run
        already committed is not written again."""
        part = self.builder.next_part() if self.incremental else self._next
        self._next += 1
        if not self.incremental and self.builder.is_committed(part):
            return
        commit_part_tables(self.builder, part, {name: (with_lineage(t, self.schemas[name], self.lineage),
                                                       self.schemas[name]) for name, t in tables.items()})


def with_lineage(table: pa.Table, schema: pa.Schema, lineage: dict) -> pa.Table:
    """The table in `schema`'s column order, lineage columns it lacks filled with `lineage`'s values."""
    n = table.num_rows
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        elif f.name in lineage:
            columns.append(pa.array([lineage[f.name]] * n, f.type))
        elif f.name in LINEAGE_NAMES:
            columns.append(pa.nulls(n, f.type))
        else:
            raise ClipstoreError(f"internal: table lacks column {f.name!r}")
    return pa.Table.from_arrays(columns, schema=schema)


def produce_pseudolabels(store: Store, *, producer: str, name: str, params: dict, tables: dict[str, pa.Schema],
                         lineage: dict, build: Callable[[Run], None], inputs: list = (), sources: list = (),
                         wanted: list[str] | None = None, key: str = "image_id", config: dict | None = None,
                         wait: bool = False) -> Artifact:
    """See the module doc. `tables`: the producer's tables (first = the one `wanted` keys live in)."""
    from clipstore.features.pseudolabels.audit import audit_rows
    incremental = wanted is not None
    recipe = {"producer": producer, **params, "tables_version": TABLES_VERSION}
    with store.writing(wait=wait):
        builder = store.produce(kind=KIND, name=name, stage=f"pseudolabel {producer}", version=STAGE_VERSION,
                                params=recipe, inputs=list(inputs), sources=list(sources), tables=declare(tables),
                                config={**recipe, **(config or {})}, reuse=not incremental)
        if isinstance(builder, Artifact):
            return builder            # this recipe completed before: nothing read
        with builder.failing_on_error():
            base = {**lineage, "producer": producer, "artifact_id": builder.artifact_id}
            todo, retired = None, 0
            primary = next(iter(tables))
            if incremental:
                have = _committed_keys(builder, primary, key)
                if have - set(wanted):     # rows of keys no longer wanted: recompute the whole version
                    for part, _, _ in builder.committed_parts():
                        builder.retire_part(part)
                    retired, have = len(have), set()
                todo = [k for k in wanted if k not in have]
                if not todo and not retired and builder.complete and not builder.pending_parts:
                    done = store.get(builder.artifact_id)
                    return builder.finish(done.counts, done.stats, summary={"new": 0}, noop=True)
            run = Run(builder, producer, dict(tables), base, todo, incremental)
            build(run)
            rows = {t: _read_rows(builder, t) for t in tables}
            audit, calibration = audit_rows(store, rows)
            for part, _, _ in builder.committed_parts("pseudo_calibration"):
                builder.retire_part(part)
            if calibration:
                commit_part_tables(builder, builder.next_part(), {"pseudo_calibration": (
                    with_lineage(pa.Table.from_pylist(calibration, schema=PSEUDO_CALIBRATION).drop_columns(
                        ["artifact_id", "producer"]),
                        PSEUDO_CALIBRATION, {"artifact_id": builder.artifact_id, "producer": producer}),
                    PSEUDO_CALIBRATION)})
            counts = {t: r.num_rows for t, r in rows.items()}
            stats = {**run.stats, "producer": producer, "audit": audit,
                     **({"new": len(todo), "retired_rows": retired} if incremental else {})}
            return builder.finish(counts, stats, summary={**counts, **({"new": len(todo)} if incremental else {})})


def _committed_keys(builder: ArtifactBuilder, table: str, key: str) -> set[str]:
    paths = [p for p, _ in builder.committed_rows(table)]
    return set(read_parquet(paths, columns=[key]).column(key).to_pylist()) if paths else set()


def _read_rows(builder: ArtifactBuilder, table: str) -> pa.Table:
    paths = [p for p, _ in builder.committed_rows(table)]
    return read_parquet(paths) if paths else pa.schema([]).empty_table()


def read_table(store: Store, art: Artifact, table: str) -> pa.Table:
    """A pseudo-label artifact's rows of one table (its visible parts)."""
    paths = store.table_paths(art, table)
    return read_parquet(paths) if paths else pa.schema([]).empty_table()


def pseudolabel_artifact(store: Store, ref: str, table: str | None = None) -> Artifact:
    """A complete pseudo-label artifact by id or name (with `table`: one that holds it)."""
    art = store.get(ref, kind=KIND)
    if art.status != "complete":
        raise InputError(f"pseudo-label artifact {art.artifact_id} is not complete (its run stopped)",
                         fix="re-run the `clipstore pseudolabel` command that builds it (it resumes)")
    if table is not None and table not in art.tables:
        raise InputError(f"{art.artifact_id} ({art.stats.get('producer')}) has no {table} table",
                         fix=f"pass an artifact that holds {table}")
    return art


# ---- rows ------------------------------------------------------------------------------------------
def entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of a (rows, m) probability matrix."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def top_k(p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights renormalised to sum 1) of the k largest entries per row, best first. A
    partition, then a sort of the k only (O(m) per row, not O(m log m)); among equal weights the
    lower index comes first, except that which of several entries tied at the k-th place is kept
    is the partition's (deterministic) choice."""
    k = min(k, p.shape[1])
    if k < p.shape[1]:
        idx = np.argpartition(-p, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(k), p.shape).copy()
    vals = np.take_along_axis(p, idx, axis=1)
    order = np.lexsort((idx, -vals), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    w = np.take_along_axis(p, idx, axis=1).astype(np.float64)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total > 0, w / np.where(total > 0, total, 1), 1.0 / k)
    return idx, w.astype(np.float32)


def caption_rows(vectors: SplitVectors, rows: np.ndarray, match: np.ndarray, weights: np.ndarray,
                 confidence: np.ndarray, entropies: np.ndarray, similarity: np.ndarray,
                 captions: dict) -> pa.Table:
    """`pseudo_captions` rows for unlabeled set rows `rows`: `match` (len(rows), k) labeled rows best first."""
    u, lab = vectors.unlabeled, vectors.labeled
    l_ids, l_samples, l_corpora = (np.asarray(lab.column(c), dtype=object) for c in ("item_id", "sample_id", "corpus"))
    ids, samples, corpora = (np.asarray(u.column(c), dtype=object)[rows] for c in ("item_id", "sample_id", "corpus"))
    u_emb = np.asarray(u.column("embeddings_id"), dtype=object)[rows]
    bank = sorted(set(lab.column("embeddings_id")))
    best = match[:, 0]
    return pa.table({
        "image_id": pa.array(ids.tolist(), pa.string()), "sample_id": pa.array(samples.tolist(), pa.string()),
        "corpus": pa.array(corpora.tolist(), pa.string()),
        "matches": pa.array(l_ids[match].tolist(), pa.list_(pa.string())),
        "match_sample_ids": pa.array(l_samples[match].tolist(), pa.list_(pa.string())),
        "weights": pa.array(list(weights), pa.list_(pa.float32())),
        "match_id": pa.array(l_ids[best].tolist(), pa.string()),
        "match_sample_id": pa.array(l_samples[best].tolist(), pa.string()),
        "match_corpus": pa.array(l_corpora[best].tolist(), pa.string()),
        "match_caption_ids": pa.array([captions.get((c, s), []) for c, s in zip(l_corpora[best], l_samples[best])],
                                      pa.list_(pa.string())),
        "confidence": pa.array(np.asarray(confidence, np.float32)),
        "entropy": pa.array(np.asarray(entropies, np.float32)),
        "similarity": pa.array(np.asarray(similarity, np.float32)),
        "embeddings_ids": pa.array([sorted({e, *bank}) for e in u_emb], pa.list_(pa.string())),
    })


def default_name(split: str, producer: str, model_name: str) -> str:
    return f"{split}.{producer}.{model_name}"


__all__ = ["KIND", "STAGE_VERSION", "DEFAULT_LOGIT_SCALE", "ROWS_PER_PART", "Side", "SplitVectors", "Run",
           "resolve_vectors", "sample_captions", "classes_by_sample", "check_pool", "check_finite",
           "vectors_digest", "logit_scale", "produce_pseudolabels", "with_lineage", "read_table",
           "pseudolabel_artifact", "entropy", "top_k", "caption_rows", "default_name", "LINEAGE"]
