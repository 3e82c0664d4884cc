"""What gets embedded, per modality: the items of a source artifact, each with its stable id.

  image      the distinct images of a corpus (item_id = image_id: identical bytes once), read
             straight from the corpus's shard tars (warehouse/shards.py)
  caption    the captions of a corpus (item_id = caption_id), raw text as the trainer sees it
  keyword    the keywords of a vocabulary (item_id = keyword_id), the keyword itself
  concept    the concepts of a vocabulary (item_id = concept_id), as "a photo includes {concept}."
  classname  the classes of a classification corpus, one prompt per template (see prompts.py)

Sources are read through the SQL views (one session per embed run), so an incrementally
re-ingested corpus shows its newest rows."""

from __future__ import annotations

from dataclasses import dataclass
from clipstore.features.prompts import TemplateSet, class_item_id
from clipstore.warehouse.errors import InputError, NotFoundError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store

IMAGE, CAPTION, KEYWORD, CONCEPT, CLASSNAME = "image", "caption", "keyword", "concept", "classname"
MODALITIES = (IMAGE, CAPTION, KEYWORD, CONCEPT, CLASSNAME)
CORPUS_MODALITIES = (IMAGE, CAPTION)
VOCAB_MODALITIES = (KEYWORD, CONCEPT)
CONCEPT_PROMPT = "a photo includes {}."   # SemiCLIP's concept prompt


@dataclass(frozen=True)
class ClassPrompts:
    item_id: str
    classname: str        # the display name that goes into the prompts
    prompts: tuple[str, ...]


def corpus_artifact(store: Store, name: str) -> Artifact:
    return store.corpora([name])[name]


def vocab_artifact(store: Store, ref: str) -> Artifact:
    """A vocabulary by name (its current version) or by artifact id."""
    try:
        art = store.get(ref, kind="vocab")
    except NotFoundError:
        have = ", ".join(sorted(a.name for a in store.current_all("vocab"))) or "none yet"
        raise NotFoundError(f"no vocabulary {ref!r} in the store (vocabularies: {have})", where=str(store.root),
                            fix="mine one first: clipstore mine keywords|concepts ...") from None
    if art.kind != "vocab":
        raise InputError(f"{ref} is a {art.kind} artifact, not a vocabulary",
                         fix="pass a name or id from `clipstore ls --kind vocab`")
    return art


def _rows(session: Session, table: str, sql: str, params: dict) -> list[dict]:
    if table not in session.tables():
        return []
    return session.query(sql, params).to_pylist()


def corpus_captions(session: Session, corpus: Artifact) -> list[dict]:
    rows = _rows(session, "captions", "SELECT caption_id, sample_id, raw FROM captions WHERE corpus = $corpus "
                                      "ORDER BY part, sample_id, ordinal", {"corpus": corpus.name})
    return [{"item_id": r["caption_id"], "modality": CAPTION, "view": 0, "corpus": corpus.name,
             "sample_id": r["sample_id"], "text": r["raw"]} for r in rows]


def vocab_texts(session: Session, vocab: Artifact, modality: str) -> list[dict]:
    table, id_col, text_col = ("keywords", "keyword_id", "keyword") if modality == KEYWORD else \
        ("concepts", "concept_id", "concept")
    if table not in vocab.tables:
        kinds = ", ".join(t for t in ("keywords", "concepts") if t in vocab.tables) or "no terms"
        raise InputError(f"vocabulary {vocab.name} has no {table} (it holds {kinds})",
                         fix=f"use --modality {'concept' if modality == KEYWORD else 'keyword'}, or another --vocab")
    rows = _rows(session, table, f"SELECT {id_col} AS id, {text_col} AS term FROM {table} WHERE vocab_id = $vocab "
                                 "ORDER BY rank, id", {"vocab": vocab.artifact_id})
    template = "{}" if modality == KEYWORD else CONCEPT_PROMPT
    return [{"item_id": r["id"], "modality": modality, "view": 0, "corpus": None, "sample_id": None,
             "text": template.format(r["term"])} for r in rows]


def class_prompts(session: Session, corpus: Artifact, templates: TemplateSet,
                  extra_names: tuple[str, ...] = ()) -> list[ClassPrompts]:
    """One entry per distinct display name: the corpus's classes, then `extra_names`."""
    rows = _rows(session, "classes", "SELECT class, name FROM classes WHERE corpus = $corpus ORDER BY class_index",
                 {"corpus": corpus.name})
    if not rows:
        raise InputError(f"corpus {corpus.name} has no classes: it is not a classification corpus",
                         fix="pass a corpus ingested with class labels (e.g. imagefolder) as --corpus")
    out, seen = [], set()
    for name in [r["name"] or r["class"] for r in rows] + list(extra_names):
        if name in seen:   # two raw classes with one display name prompt identically
            continue
        seen.add(name)
        out.append(ClassPrompts(class_item_id(name, templates), name, tuple(templates.prompts(name))))
    return out
