"""`clipstore split`: labeled / unlabeled / val / test manifests over one or more corpora.

A split is an artifact of kind "split" holding one table, `splits(split, role, corpus, sample_id,
image_id, source_key, source_index, position)`, with its seed, ratio, unit, selection method and
manifest digest in stats. The unit is the image: a sample is labeled or unlabeled with all of its
captions. Labeled and unlabeled come from the source "train" entries, val and test are the
sources' own val and test entries with an image.

Selection (default): the train samples that have an image, ordered by the corpora as given and
then by source position, form the pool; `numpy.random.default_rng(seed).permutation` over the pool
members that have a caption picks `int(n * ratio)` labeled. A sample without any caption cannot be
labeled: it goes to unlabeled (shift setting: it is left out) and is counted in stats.

Shift setting (`unlabeled_corpora`): labeled as above; unlabeled = every image of those corpora
(e.g. RESISC45); the other train images of the captioned corpora are in no role (`left_out`).

`compat="sclip"` reproduces the public S-CLIP code (alinlab/s-clip, custom/data.py). There,
RS-ALL = ConcatDataset([RSICD, UCMCaptions, SydneyCaptions]) of torchrs datasets, each built with
split="train" as `[c for c in json["images"] if c["split"] == "train"]` (file order), and
`split_data` draws ONE permutation over the whole concatenation:
`torch.randperm(len(d), generator=torch.Generator().manual_seed(seed))`, labeled =
`indices[:int(len(d) * ratio)]`, unlabeled (query) = `indices[size:]`. RS-SHIFT keeps only the
labeled part and takes every RESISC45 image as the query set (it asks for a dataset "RS", which
get_custom_data does not know; RS-ALL is evidently meant). So here N = all train entries of the
corpora (samples and rejected entries alike, by source_index), and entries selected whose image is
absent are counted as unavailable instead of shifting the permutation."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from clipstore.warehouse.parquet import commit_part_tables
from clipstore.warehouse.errors import InputError
from clipstore.warehouse.hashing import digest
from clipstore.warehouse.sql import query
from clipstore.warehouse.store import Artifact, ArtifactBuilder, Store

ROLES = ("labeled", "unlabeled", "val", "test")
EVAL_ROLES = ("val", "test")          # taken from the sources' own split of the same name
UNIT = "image"
STAGE_VERSION = 1   # bump when the same inputs would give another manifest
COMPAT_MODES = ("sclip",)
SPLIT_TABLES = {"splits": {}}         # one part per split artifact: nothing to supersede
SPLITS = pa.schema([
    ("split", pa.string()), ("role", pa.string()), ("corpus", pa.string()), ("sample_id", pa.string()),
    ("image_id", pa.string()), ("source_key", pa.string()), ("source_index", pa.int64()),
    # index of the entry in the ordered pool its role was drawn from (compat: the public code's
    # dataset index over the concatenated train entries)
    ("position", pa.int64()),
])


@dataclass(frozen=True)
class Candidate:
    """One entry of a corpus source: a sample, or an entry rejected at ingest (sample_id None)."""

    corpus: str
    source_key: str
    source_index: int
    split: str | None
    sample_id: str | None
    image_id: str | None
    n_captions: int

    @property
    def has_image(self) -> bool:
        return self.image_id is not None


Placed = tuple[int, Candidate]  # (position, entry)


@dataclass
class Selection:
    """Labeled entries and the other train entries, both with images, plus what to report."""

    labeled: list[Placed]
    rest: list[Placed]
    report: dict


def make_split(store: Store, name: str, *, corpora: list[str], unlabeled_corpora: list[str] | None = None,
               labeled_ratio: float, seed: int, compat: str | None = None, extend: bool = False,
               wait: bool = False) -> Artifact:
    """Build (or return, when this recipe over these corpus versions exists) the split `name`.
    `extend`: grow the current version of `name` with the entries it lacks (module doc)."""
    unlabeled_corpora = list(unlabeled_corpora or [])
    _validate(name, corpora, unlabeled_corpora, labeled_ratio, compat)
    with store.writing(wait=wait):
        inputs = store.corpora(corpora + unlabeled_corpora)
        params = {"corpora": list(corpora), "unlabeled_corpora": unlabeled_corpora, "labeled_ratio": labeled_ratio,
                  "seed": seed, "compat": compat, "unit": UNIT}
        previous = _extended(store, name, params, inputs) if extend else None
        if previous is not None and _pins_current(store, previous, inputs):
            return replace(previous, noop=True)          # nothing new in the corpora: up to date
        if previous is not None:
            params = {**params, "extends": previous.artifact_id}
        builder = store.produce(kind="split", name=name, stage="split", version=STAGE_VERSION, params=params,
                                inputs=list(inputs.values()) + ([previous] if previous else []), tables=SPLIT_TABLES,
                                config=params)
        if isinstance(builder, Artifact):
            return builder
        with builder.failing_on_error():
            entries = _load_entries(store, inputs)
            _require_pools(entries, corpora, unlabeled_corpora, compat)
            if previous is None:
                rows, counts, stats = plan_split(name, entries, corpora, unlabeled_corpora, labeled_ratio, seed,
                                                 compat)
            else:
                rows, counts, stats = plan_growth(name, entries, corpora, unlabeled_corpora, labeled_ratio, seed,
                                                  previous, _previous_rows(store, previous))
            return _write(builder, rows, counts, stats)


def _extended(store: Store, name: str, params: dict, inputs: dict[str, Artifact]) -> Artifact | None:
    """The current version of split `name` that `extend` grows (None: there is none yet)."""
    previous = store.current("split", name)
    if previous is None:
        return None
    if params["compat"] is not None:
        raise InputError("--extend grows a split with clipstore's own selection", fix="drop --compat or --extend")
    kept = {k: v for k, v in previous.params.items() if k != "extends"}
    if kept != params:
        differ = ", ".join(f"{k}: {kept.get(k)!r} now, {v!r} given" for k, v in params.items() if kept.get(k) != v)
        raise InputError(f"--extend keeps the settings of split {name}'s current version ({differ})",
                         where=previous.artifact_id, fix="give the same settings, or choose a new split name")
    return previous


def _pins_current(store: Store, previous: Artifact, inputs: dict[str, Artifact]) -> bool:
    """Whether the split version already covers the corpora as they are now."""
    pinned = {i[0]: i[1] for i in previous.recipe.get("inputs", []) if isinstance(i, list)}
    now = store.version_digests([a.artifact_id for a in inputs.values()])
    return all(pinned.get(aid) == d for aid, d in now.items())


def _previous_rows(store: Store, previous: Artifact) -> list[dict]:
    import pyarrow.parquet as pq
    return [r for path in store.table_paths(previous, "splits") for r in pq.read_table(path).to_pylist()]


def plan_growth(name: str, entries: dict[str, list[Candidate]], corpora: list[str], unlabeled_corpora: list[str],
                ratio: float, seed: int, previous: Artifact, old_rows: list[dict]) -> tuple[list[dict], dict, dict]:
    """A grown split: the previous version's rows (less entries the corpora dropped), then the new
    entries, placed with their own seeded draw; pure."""
    generation = int(previous.stats.get("generation", 0)) + 1
    present = {(e.corpus, e.sample_id): e for pool in entries.values() for e in pool if e.has_image}
    kept = [{**r, "image_id": present[(r["corpus"], r["sample_id"])].image_id} for r in old_rows
            if (r["corpus"], r["sample_id"]) in present]
    known = {(r["corpus"], r["sample_id"]) for r in old_rows}
    new = {c: [e for e in entries[c] if e.has_image and (c, e.sample_id) not in known] for c in entries}
    train = [e for c in corpora for e in sorted(new[c], key=lambda e: e.source_index) if e.split == "train"]
    eligible = [e for e in train if e.n_captions > 0]
    n_labeled = int(len(eligible) * ratio)
    order = np.random.default_rng([seed, generation]).permutation(len(eligible))
    labeled_at = {int(i) for i in order[:n_labeled]}
    added: dict[str, list[Candidate]] = {
        "labeled": [e for i, e in enumerate(eligible) if i in labeled_at],
        "unlabeled": ([] if unlabeled_corpora else
                      [e for i, e in enumerate(eligible) if i not in labeled_at]
                      + [e for e in train if e.n_captions == 0])
                     + [e for c in unlabeled_corpora for e in sorted(new[c], key=lambda e: e.source_index)],
    }
    for role in EVAL_ROLES:
        added[role] = [e for c in corpora for e in sorted(new[c], key=lambda e: e.source_index) if e.split == role]
    rows = list(kept)
    for role in ROLES:
        start = 1 + max([r["position"] for r in kept if r["role"] == role], default=-1)
        rows += [{"split": name, "role": role, "corpus": e.corpus, "sample_id": e.sample_id, "image_id": e.image_id,
                  "source_key": e.source_key, "source_index": e.source_index, "position": start + k}
                 for k, e in enumerate(added[role])]
    rows.sort(key=lambda r: (ROLES.index(r["role"]), r["position"]))
    counts = {role: sum(r["role"] == role for r in rows) for role in ROLES}
    per_corpus: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ROLES, 0))
    for r in rows:
        per_corpus[r["corpus"]][r["role"]] += 1
    stats = {**{k: v for k, v in previous.stats.items() if k in ("seed", "labeled_ratio", "unit", "compat", "corpora",
                                                                  "unlabeled_corpora")},
             "digest": manifest_digest(rows), "generation": generation, "extends": previous.artifact_id,
             "added": {role: len(v) for role, v in added.items()}, "dropped": len(old_rows) - len(kept),
             "selection": {"method": "numpy.random.default_rng([seed, generation]).permutation(n_new_eligible)"
                                     "[:int(n_new_eligible * ratio)]", "new_eligible": len(eligible)},
             "left_out": previous.stats.get("left_out", 0), "images_in_several_roles": _images_in_several_roles(rows),
             "per_corpus": dict(per_corpus)}
    return rows, counts, stats


def plan_split(name: str, entries: dict[str, list[Candidate]], corpora: list[str], unlabeled_corpora: list[str],
               ratio: float, seed: int, compat: str | None) -> tuple[list[dict], dict, dict]:
    """The manifest rows, counts per role and stats of a split; pure, so errors come before any write."""
    select = select_sclip if compat == "sclip" else select_default
    selection = select([entries[c] for c in corpora], ratio, seed)
    roles: dict[str, list[Placed]] = {"labeled": selection.labeled}
    if unlabeled_corpora:
        roles["unlabeled"] = _image_pool(entries[c] for c in unlabeled_corpora)
        left_out = len(selection.rest)
    else:
        roles["unlabeled"] = selection.rest
        left_out = 0
    for role in EVAL_ROLES:
        roles[role] = _image_pool([e for e in entries[c] if e.split == role] for c in corpora)

    rows = [{"split": name, "role": role, "corpus": e.corpus, "sample_id": e.sample_id, "image_id": e.image_id,
             "source_key": e.source_key, "source_index": e.source_index, "position": pos}
            for role in ROLES for pos, e in sorted(roles[role], key=lambda p: p[0])]
    counts = {role: len(roles[role]) for role in ROLES}
    per_corpus: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ROLES, 0))
    for r in rows:
        per_corpus[r["corpus"]][r["role"]] += 1
    stats = {"seed": seed, "labeled_ratio": ratio, "unit": UNIT, "compat": compat,
             "corpora": list(corpora), "unlabeled_corpora": unlabeled_corpora,
             "digest": manifest_digest(rows), "selection": selection.report, "left_out": left_out,
             "images_in_several_roles": _images_in_several_roles(rows), "per_corpus": dict(per_corpus)}
    return rows, counts, stats


def _write(builder: ArtifactBuilder, rows: list[dict], counts: dict, stats: dict) -> Artifact:
    if not builder.is_committed(0):  # a killed run may have committed it already
        commit_part_tables(builder, 0, {"splits": (rows, SPLITS)})
    return builder.finish(counts, stats, summary=counts)


# ---- selection ------------------------------------------------------------------------------
def select_default(pools: list[list[Candidate]], ratio: float, seed: int) -> Selection:
    """Seeded permutation over the captioned train images (corpus order, then source order)."""
    pool = _image_pool([e for e in entries if e.split == "train"] for entries in pools)
    eligible = [p for p in pool if p[1].n_captions > 0]
    n_labeled = _labeled_size(len(eligible), ratio, "captioned train images")
    order = np.random.default_rng(seed).permutation(len(eligible))
    labeled_at = {int(i) for i in order[:n_labeled]}
    labeled = [p for i, p in enumerate(eligible) if i in labeled_at]
    rest = [p for i, p in enumerate(eligible) if i not in labeled_at] + [p for p in pool if p[1].n_captions == 0]
    report = {"method": "numpy.random.default_rng(seed).permutation(n_eligible)[:int(n_eligible * ratio)]",
              "train_images": len(pool), "eligible": len(eligible), "captionless": len(pool) - len(eligible)}
    return Selection(labeled, rest, report)


def select_sclip(pools: list[list[Candidate]], ratio: float, seed: int) -> Selection:
    """The public S-CLIP selection: one torch.randperm over every train entry of the corpora,
    concatenated in the given order, each in source order, images present or not."""
    import torch  # only this mode needs it

    entries = [e for pool in pools for e in pool if e.split == "train"]
    size = _labeled_size(len(entries), ratio, "train entries")
    perm = torch.randperm(len(entries), generator=torch.Generator().manual_seed(seed)).tolist()
    unknown_split = sum(1 for pool in pools for e in pool if e.split is None)

    def usable(positions: list[int], need_caption: bool) -> tuple[list[Placed], int, int]:
        chosen = [(i, entries[i]) for i in positions]
        with_image = [p for p in chosen if p[1].has_image]
        kept = [p for p in with_image if p[1].n_captions > 0 or not need_caption]
        return kept, len(chosen) - len(with_image), len(with_image) - len(kept)

    labeled, labeled_missing, captionless = usable(perm[:size], need_caption=True)
    rest, rest_missing, _ = usable(perm[size:], need_caption=False)
    report = {"method": "torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:int(n * ratio)]",
              "torch_version": torch.__version__, "positions": len(entries), "selected_labeled": size,
              # selected entries without an image on disk: reported, never replaced by others
              "unavailable": {"labeled": labeled_missing, "not_labeled": rest_missing},
              "labeled_without_captions": captionless,
              # entries rejected before their split was read (malformed, repeated keys): the public
              # code would have counted them if they were train entries, so exactness is not assured
              "entries_of_unknown_split": unknown_split, "exact": unknown_split == 0}
    return Selection(labeled, rest, report)


def _labeled_size(n: int, ratio: float, what: str) -> int:
    size = int(n * ratio)  # the public code's rounding (down)
    if size == 0:
        raise InputError(f"labeled ratio {ratio} of {n} {what} selects no labeled image",
                         fix=f"raise --labeled-ratio to at least {1 / n:.4g} or add corpora" if n else
                             "add corpora with captioned train images")
    return size


def _image_pool(groups) -> list[Placed]:
    """Entries with an image, group after group, each group in source order, numbered from 0."""
    ordered = [e for group in groups for e in sorted(group, key=lambda e: e.source_index) if e.has_image]
    return list(enumerate(ordered))


# ---- manifest -------------------------------------------------------------------------------
def manifest_digest(rows: list[dict]) -> str:
    """sha256 over the sorted (role, sample_id) list: equal manifests, equal digests."""
    return digest(sorted([r["role"], r["sample_id"]] for r in rows))


def _images_in_several_roles(rows: list[dict]) -> int:
    roles_of: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        roles_of[r["image_id"]].add(r["role"])
    return sum(1 for roles in roles_of.values() if len(roles) > 1)


# ---- inputs ---------------------------------------------------------------------------------
def _validate(name: str, corpora: list[str], unlabeled_corpora: list[str], ratio: float, compat: str | None) -> None:
    if not name or not name.strip():
        raise InputError("a split needs a name", fix="clipstore split NAME --corpus A ...")
    if not corpora:
        raise InputError("a split needs at least one --corpus", fix="e.g. --corpus rsicd --corpus ucm_captions")
    repeated = [c for c, n in Counter(corpora + unlabeled_corpora).items() if n > 1]
    if repeated:
        raise InputError(f"corpus named more than once: {', '.join(repeated)}",
                         fix="name each corpus once, either as --corpus or as --unlabeled-corpus")
    if not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:  # NaN fails the comparison too
        raise InputError(f"labeled ratio {ratio!r} is outside (0, 1]",
                         fix="pass the share of train images to label, e.g. --labeled-ratio 0.1")
    if compat is not None and compat not in COMPAT_MODES:
        raise InputError(f"unknown compatibility mode {compat!r}", fix=f"use one of: {', '.join(COMPAT_MODES)}")


def _load_entries(store: Store, inputs: dict[str, Artifact]) -> dict[str, list[Candidate]]:
    """Every entry of each corpus's source: its samples and its rejected entries, in source order."""
    corpora = list(inputs)
    selects = {"samples": "SELECT corpus, source_key, source_index, split, sample_id, image_id, n_captions "
                          "FROM samples WHERE list_contains($corpora, corpus)",
               "rejects": "SELECT corpus, source_key, source_index, split, NULL AS sample_id, "
                          "NULL AS image_id, 0 AS n_captions FROM rejects WHERE list_contains($corpora, corpus)"}
    # a view exists once some corpus has that table; ask only for tables our inputs have
    present = [sql for table, sql in selects.items() if any(store.table_paths(a, table) for a in inputs.values())]
    entries: dict[str, list[Candidate]] = {c: [] for c in corpora}
    if present:
        for r in query(store, " UNION ALL ".join(present), {"corpora": corpora}).to_pylist():
            entries[r["corpus"]].append(Candidate(**r))
    for items in entries.values():
        items.sort(key=lambda e: e.source_index)
    return entries


def _require_pools(entries: dict[str, list[Candidate]], corpora: list[str], unlabeled_corpora: list[str],
                   compat: str | None) -> None:
    """Every captioned corpus needs train entries (with images, unless positions alone matter, as
    in compat mode); every unlabeled corpus needs images."""
    for corpus in corpora:
        train = [e for e in entries[corpus] if e.split == "train"]
        if not train:
            splits = sorted({str(e.split) for e in entries[corpus]})
            raise InputError(f"corpus {corpus!r} has no train entries "
                             f"(its source splits: {', '.join(splits) or 'none'})",
                             fix="labeled and unlabeled images come from the source's train split; pass this corpus "
                                 "as --unlabeled-corpus, or ingest a source that marks train entries")
        if compat is None and not any(e.has_image for e in train):
            raise InputError(f"none of the {len(train)} train entries of corpus {corpus!r} has an image",
                             fix="ingest its images (--images DIR, --image-map TSV); `clipstore doctor` says what "
                                 "is missing")
    for corpus in unlabeled_corpora:
        if not any(e.has_image for e in entries[corpus]):
            raise InputError(f"unlabeled corpus {corpus!r} has no images", fix="ingest its images first")
