"""What a mining run reads: the captions of one split role (`--split S --role R`) or of whole
corpora (`--corpus A --corpus B`, caption-only corpora included), resolved to artifacts.

A scope's `versions` (input artifact -> digest of its committed parts) go into every recipe
built on it, so re-mining unchanged inputs returns the existing artifact and a corpus that
gained data gives a new one."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

ROLES = ("labeled", "unlabeled", "val", "test")


@dataclass(frozen=True)
class Scope:
    corpora: tuple[str, ...]            # every corpus whose captions the scope touches, in order
    split: str | None = None
    role: str | None = None
    inputs: dict[str, Artifact] = field(default_factory=dict)   # corpus name / "split:<name>" -> artifact
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """A short stable name: `rs_all.labeled`, or `ucm_captions`, `a+b` for several corpora."""
        return f"{self.split}.{self.role}" if self.split else "+".join(self.corpora)

    @property
    def input_ids(self) -> list[str]:
        return sorted(a.artifact_id for a in self.inputs.values())

    def params(self) -> dict:
        return {"split": self.split, "role": self.role, "corpora": list(self.corpora), "input_versions": self.versions}

    def corpus_artifacts(self) -> dict[str, Artifact]:
        return {c: self.inputs[c] for c in self.corpora}


def resolve_scope(store: Store, *, split: str | None = None, role: str | None = None,
                  corpora: list[str] | None = None) -> Scope:
    """Check the request and find its artifacts; raises a clear error for what is missing."""
    corpora = list(dict.fromkeys(corpora or []))
    if bool(split) == bool(corpora):
        raise InputError("say which captions to mine: --split NAME --role ROLE, or one or more --corpus NAME",
                         fix="e.g. --split rs_all --role labeled, or --corpus ucm_captions")
    found = {a.name: a for a in store.current_all("corpus")}
    inputs: dict[str, Artifact] = {}
    if split:
        role = role or "labeled"
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
    versions = store.versions(sorted(a.artifact_id for a in inputs.values()))
    return Scope(tuple(corpora), split, role if split else None, inputs, versions)


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
                   "WHERE s.split = $split AND s.role = $role AND list_contains($corpora, c.corpus) "
                   "ORDER BY list_position($corpora, c.corpus), m.source_index, c.ordinal")
            params = {"split": scope.split, "role": scope.role, "corpora": list(scope.corpora)}
        else:
            sql = (f"SELECT {CAPTION_COLUMNS} FROM captions c JOIN samples m ON m.sample_id = c.sample_id "
                   "WHERE list_contains($corpora, c.corpus) "
                   "ORDER BY list_position($corpora, c.corpus), m.source_index, c.ordinal")
            params = {"corpora": list(scope.corpora)}
        if "captions" not in session.tables():
            return pa.table({"corpus": pa.array([], pa.string()), "caption_id": pa.array([], pa.string()),
                             "sample_id": pa.array([], pa.string()), "image_id": pa.array([], pa.string()),
                             "ordinal": pa.array([], pa.int32()), "text": pa.array([], pa.string())})
        return session.query(sql, params)
    finally:
        if own:
            session.close()
