"""Arrow schemas of the mining stage's tables (all visible in `clipstore sql`).

Ids: `keyword_id` = text_id("keyword", normalised keyword) and `concept_id` = text_id("concept",
lemma): stable across vocabulary versions, so embeddings of a keyword are reused when a new
version keeps it. `vocab_id` is the artifact id of the vocabulary version a row belongs to."""

from __future__ import annotations

import pyarrow as pa

from clipstore.warehouse.parquet import table_spec

TABLES_VERSION = 3   # bump when a vocabulary table's columns change

VOCABULARIES = pa.schema([  # one row per vocabulary version
    ("vocab_id", pa.string()), ("vocab", pa.string()), ("kind", pa.string()), ("scope", pa.string()),
    ("method", pa.string()), ("params", pa.string()), ("n_entries", pa.int64()),
])
KEYWORDS = pa.schema([
    ("vocab_id", pa.string()), ("keyword_id", pa.string()), ("keyword", pa.string()), ("rank", pa.int32()),
    ("score", pa.float64()), ("n_words", pa.int32()), ("source", pa.string()),
    # document frequency over the matched captions (NULL when the vocabulary was not matched)
    ("n_captions", pa.int64()), ("n_images", pa.int64()),
])
CLASSNAMES = pa.schema([  # the normalisation table behind a class-name vocabulary
    ("vocab_id", pa.string()), ("keyword_id", pa.string()), ("corpus", pa.string()), ("class", pa.string()),
    ("raw_name", pa.string()), ("name", pa.string()), ("rule", pa.string()),
])
CAPTION_KEYWORDS = pa.schema([
    ("vocab_id", pa.string()), ("caption_id", pa.string()), ("keyword_id", pa.string()),
    ("corpus", pa.string()), ("sample_id", pa.string()),
])
IMAGE_KEYWORDS = pa.schema([  # candidate set of a sample = union over its captions
    ("vocab_id", pa.string()), ("corpus", pa.string()), ("sample_id", pa.string()), ("image_id", pa.string()),
    ("keyword_ids", pa.list_(pa.string())), ("n_keywords", pa.int32()),
    # caption coverage per sample, so coverage questions need not scan the caption matrix
    ("n_captions", pa.int32()), ("n_captions_with_keyword", pa.int32()),
])
CAPTION_TERMS = pa.schema([  # per-caption parse cache: YAKE keyphrases, nouns, noun phrases
    ("corpus", pa.string()), ("caption_id", pa.string()), ("sample_id", pa.string()), ("kind", pa.string()),
    ("term", pa.string()), ("score", pa.float64()), ("part", pa.int32()),
])
CONCEPTS = pa.schema([
    ("vocab_id", pa.string()), ("concept_id", pa.string()), ("concept", pa.string()), ("rank", pa.int32()),
    ("n_images", pa.int64()), ("df", pa.float64()),
])
CAPTION_CONCEPTS = pa.schema([
    ("vocab_id", pa.string()), ("caption_id", pa.string()), ("concept_id", pa.string()),
    ("corpus", pa.string()), ("sample_id", pa.string()),
])
IMAGE_CONCEPTS = pa.schema([  # multi-hot, long form: one row per (sample, concept) that is on
    ("vocab_id", pa.string()), ("corpus", pa.string()), ("sample_id", pa.string()), ("image_id", pa.string()),
    ("concept_id", pa.string()),
])

CLASS_CONCEPTS = pa.schema([  # concept -> class: per-class coverage, the class priors OT marginals need
    ("vocab_id", pa.string()), ("corpus", pa.string()), ("class", pa.string()), ("concept_id", pa.string()),
    ("concept", pa.string()), ("n_images", pa.int64()), ("class_images", pa.int64()), ("df", pa.float64()),
])

SCHEMAS = {"vocabularies": VOCABULARIES, "keywords": KEYWORDS, "classnames": CLASSNAMES,
           "caption_keywords": CAPTION_KEYWORDS, "image_keywords": IMAGE_KEYWORDS, "caption_terms": CAPTION_TERMS,
           "concepts": CONCEPTS, "caption_concepts": CAPTION_CONCEPTS, "image_concepts": IMAGE_CONCEPTS,
           "class_concepts": CLASS_CONCEPTS}


def declare(*names: str, key: str | None = None) -> dict[str, dict]:
    return {n: table_spec(SCHEMAS[n], key) for n in names}


KEYWORD_VOCAB_TABLES = declare("vocabularies", "keywords", "caption_keywords", "image_keywords")
CLASSNAME_VOCAB_TABLES = declare("vocabularies", "keywords", "classnames", "caption_keywords", "image_keywords")
CONCEPT_VOCAB_TABLES = declare("vocabularies", "concepts", "caption_concepts", "image_concepts", "class_concepts")
TERMS_TABLES = declare("caption_terms", key="caption_id")  # incremental per corpus: newest parse wins
