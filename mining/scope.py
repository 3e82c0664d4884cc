"""What a mining run reads: the captions of one split role (`--split S --role R`) or of whole
corpora (`--corpus A --corpus B`, caption-only corpora included), resolved to artifacts.

Role `train` = labeled + unlabeled: every training caption of a split's images. With corpora,
`source_split="train"` keeps the captions of the sources' own train entries, images on disk or
not: that is how S-CLIP mined its YAKE lists (the train captions of RSICD+UCM+Sydney). A split
per corpus (`source_splits={"rsicd": "train"}`, written `--corpus rsicd:train` on the command
line) filters only that corpus; the others keep every caption (or `source_split`'s).

A scope's `inputs` are the input artifacts of every recipe built on it; `store.produce` pins
their versions, so re-mining unchanged inputs returns the existing artifact and a corpus that
gained data gives a new one. `versions` (input artifact -> digest of its visible parts) is
what was read, for reports; it is not a recipe parameter."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

ROLES = ("labeled", "unlabeled", "val", "test", "train")
SOURCE_SPLITS = ("train", "val", "test")
SPLIT_ROLES = {"train": ("labeled", "unlabeled")}   # a role that stands for several roles of a split


@dataclass(frozen=True)
class Scope:
    corpora: tuple[str, ...]            # every corpus whose captions the scope touches, in order
    split: str | None = None
    role: str | None = None
    source_split: str | None = None     # with corpora: only entries of the sources' own split
    inputs: dict[str, Artifact] = field(default_factory=dict)   # corpus name / "split:<name>" -> artifact
    versions: dict[str, str] = field(default_factory=dict)      # reported, not pinned (produce pins inputs)
    source_splits: dict[str, str] = field(default_factory=dict)  # per corpus, when they differ

    @property
    def label(self) -> str:
        """A short stable name: `rs_all.labeled`, or `ucm_captions`, `a+b` for several corpora,
        `a.train+b` when only some corpora are filtered."""
        if self.split:
            return f"{self.split}.{self.role}"
        if self.source_splits:
            return "+".join(f"{c}.{self.source_splits[c]}" if c in self.source_splits else c for c in self.corpora)
        return "+".join(self.corpora) + (f".{self.source_split}" if self.source_split else "")

    @property
    def filtered(self) -> bool:
        """Whether the scope keeps only some of its corpora's captions."""
        return bool(self.split or self.source_split or self.source_splits)

    def split_of(self, corpus: str) -> str | None:
        return self.source_splits.get(corpus, self.source_split)

    @property
    def input_ids(self) -> list[str]:
        return sorted(a.artifact_id for a in self.inputs.values())

    @property
    def split_roles(self) -> list[str]:
        """The roles of the split manifest this scope reads."""
        return list(SPLIT_ROLES.get(self.role, (self.role,))) if self.role else []

    def params(self) -> dict:
        params = {"split": self.split, "role": self.role, "corpora": list(self.corpora)}
        if self.source_split:  # only when set, so recipes made before the option keep their ids
            params["source_split"] = self.source_split
        if self.source_splits:
            params["source_splits"] = dict(self.source_splits)
        return params

    def corpus_artifacts(self) -> dict[str, Artifact]:
        return {c: self.inputs[c] for c in self.corpora}


def parse_corpus_splits(specs: list[str]) -> tuple[list[str], dict[str, str]]:
    """`["rsicd:train", "ucm_captions"]` -> (["rsicd", "ucm_captions"], {"rsicd": "train"})."""
    corpora: list[str] = []
    splits: dict[str, str] = {}
    for spec in specs:
        name, sep, split = spec.rpartition(":")
        if not sep:
            name = spec
        elif not name or split not in SOURCE_SPLITS:
            raise InputError(f"--corpus {spec!r} is not NAME or NAME:SPLIT",
                             fix=f"e.g. --corpus rsicd:train; SPLIT is one of {', '.join(SOURCE_SPLITS)}")
        if name in corpora:
            if splits.get(name) != (split or None):
                raise InputError(f"corpus {name!r} is named twice with different splits",
                                 fix="name each corpus once, with at most one :SPLIT")
            continue
        corpora.append(name)
        if sep:
            splits[name] = split
    return corpora, splits


def resolve_scope(store: Store, *, split: str | None = None, role: str | None = None,
                  corpora: list[str] | None = None, source_split: str | None = None,
                  source_splits: dict[str, str] | None = None) -> Scope:
    """Check the request and find its artifacts; raises a clear error for what is missing."""
    corpora = list(dict.fromkeys(corpora or []))
    source_splits = dict(source_splits or {})
    if (source_split or source_splits) and split:
        raise InputError("--source-split filters whole corpora; a split already says which images count",
                         fix="use --corpus A ... --source-split train, or --split NAME --role train")
    for s in [source_split, *source_splits.values()]:
        if s and s not in SOURCE_SPLITS:
            raise InputError(f"unknown source split {s!r}", fix=f"use one of: {', '.join(SOURCE_SPLITS)}")
    unknown = sorted(set(source_splits) - set(corpora))
    if unknown:
        raise InputError(f"a source split is given for {', '.join(unknown)}, which is not a --corpus",
                         fix="give the split with the corpus: --corpus NAME:SPLIT")
    # every corpus filtered alike is the plain --source-split scope (the same recipe)
    effective = {c: source_splits.get(c, source_split) for c in corpora}
    if source_splits and None not in effective.values() and len(set(effective.values())) == 1:
        source_split, source_splits = next(iter(effective.values())), {}
    elif source_splits:
        source_splits = {c: s for c, s in effective.items() if s is not None}
        source_split = None
    if bool(split) == bool(corpora):
        raise InputError("say which captions to mine: --split NAME --role ROLE, or one or more --corpus NAME",
                         fix="e.g. --split rs_all --role labeled, or --corpus ucm_captions")
    found = {a.name: a for a in store.current_all("corpus")}
    inputs: dict[str, Artifact] = {}
    if role and not split:
        raise InputError(f"--role {role} needs --split NAME: a role is part of a split",
                         fix="add --split NAME, or drop --role to mine whole corpora")
    if split:
        if not role:
            # no silent default: labeled-only and all-train vocabularies differ a lot
            raise InputError(f"split {split!r} given without a role", fix=f"add --role ({'|'.join(ROLES)})")
        if role not in ROLES:
            raise InputError(f"unknown role {role!r}", fix=f"use one of: {', '.join(ROLES)}")
        art = store.current("split", split)
        if art is None:
            raise NotFoundError(f"no split {split!r} in the store", where=str(store.root),
                                fix="build it first: clipstore split NAME --corpus A ... --labeled-ratio R --seed S")
        inputs[f"split:{split}"] = art
        corpora = list(art.params.get("corpora", [])) + list(art.params.get("unlabeled_corpora", []))
    missing = [c for c in corpora if c not in found]
    if missing:
        have = ", ".join(sorted(found)) or "none yet"
        raise NotFoundError(f"no corpus {', '.join(map(repr, missing))} in the store (corpora: {have})",
                            where=str(store.root), fix="ingest it first (`clipstore ingest FORMAT PATH --name NAME`)")
    inputs.update({c: found[c] for c in corpora})
    versions = store.version_digests(sorted(a.artifact_id for a in inputs.values()))
    return Scope(tuple(corpora), split, role, source_split, inputs, versions, source_splits)


def resolve_match_scope(store: Store, *, split: str | None = None, role: str | None = None,
                        corpora: list[str] | None = None, default: Scope | None = None) -> Scope | None:
    """The captions a vocabulary is matched against: the scope asked for, else every caption of
    the default scope's corpora (all roles, so labeled and unlabeled images both get candidate
    sets), else none."""
    if split or role or corpora:
        return resolve_scope(store, split=split, role=role, corpora=corpora)
    if default is None:
        return None
    return resolve_scope(store, corpora=list(default.corpora))


CAPTION_COLUMNS = "c.corpus, c.caption_id, c.sample_id, c.image_id, c.ordinal, c.text"


def scope_captions(store: Store, scope: Scope, session: Session | None = None) -> pa.Table:
    """The scope's captions (corpus, caption_id, sample_id, image_id, ordinal, text) in a stable
    order: corpora as given, then source order, then caption ordinal."""
    own = session is None
    session = session or Session(store)
    try:
        if scope.split:
            sql = (f"SELECT {CAPTION_COLUMNS} FROM captions c JOIN splits s USING (sample_id) "
                   "JOIN samples m ON m.sample_id = c.sample_id "
                   "WHERE s.split = $split AND list_contains($roles, s.role) AND list_contains($corpora, c.corpus) "
                   "ORDER BY list_position($corpora, c.corpus), m.source_index, c.ordinal")
            params = {"split": scope.split, "roles": scope.split_roles, "corpora": list(scope.corpora)}
        else:
            # the source split each corpus keeps, aligned with $corpora (NULL: every caption)
            sql = (f"SELECT {CAPTION_COLUMNS} FROM captions c JOIN samples m ON m.sample_id = c.sample_id "
                   "WHERE list_contains($corpora, c.corpus) "
                   "AND ($splits[list_position($corpora, c.corpus)] IS NULL "
                   "OR m.split = $splits[list_position($corpora, c.corpus)]) "
                   "ORDER BY list_position($corpora, c.corpus), m.source_index, c.ordinal")
            params = {"corpora": list(scope.corpora), "splits": [scope.split_of(c) for c in scope.corpora]}
        if "captions" not in session.tables():
            return pa.table({"corpus": pa.array([], pa.string()), "caption_id": pa.array([], pa.string()),
                             "sample_id": pa.array([], pa.string()), "image_id": pa.array([], pa.string()),
                             "ordinal": pa.array([], pa.int32()), "text": pa.array([], pa.string())})
        return session.query(sql, params)
    finally:
        if own:
            session.close()
