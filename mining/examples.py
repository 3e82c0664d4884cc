"""Example questions over the mined tables: printed by `make demo`, shown with their real output
in docs/mining.md, and timed over a 1M-caption store by bench/mining.py. One definition serves all
three, with the vocabulary, split and corpus names as bound parameters."""

from __future__ import annotations

import re

# The names `make mine` gives the vocabularies over the shared data (clipstore.toml).
REAL_STORE = {"keywords": "keywords.sclip", "classnames": "classnames.ucm_cls+rsicd_cls",
              "concepts": "concepts.ucm_captions", "split": "rs_all",
              "corpus": "ucm_captions", "concept": "airport", "cooc_concepts": "concepts.rsicd"}

QUERIES: list[tuple[str, str]] = [
    ("Most frequent keywords (captions and images containing each)",
     """SELECT k.keyword, k.rank, k.n_captions AS captions, k.n_images AS images
FROM keywords k JOIN vocabularies v USING (vocab_id) WHERE v.vocab = $keywords
ORDER BY captions DESC, k.keyword LIMIT 10"""),
    ("Keyword coverage per split role (captions with at least one keyword)",
     """SELECT s.role, sum(ik.n_captions) AS captions, sum(ik.n_captions_with_keyword) AS with_keyword,
       round(100.0 * sum(ik.n_captions_with_keyword) / sum(ik.n_captions), 1) AS pct
FROM image_keywords ik JOIN vocabularies v USING (vocab_id)
JOIN splits s ON s.sample_id = ik.sample_id AND s.split = $split
WHERE v.vocab = $keywords GROUP BY s.role ORDER BY s.role"""),
    ("Images whose captions name no scene class (empty class-name candidate sets)",
     """SELECT ik.corpus, count(*) AS images, min(c.text) AS example_caption
FROM image_keywords ik JOIN vocabularies v USING (vocab_id)
JOIN captions c ON c.sample_id = ik.sample_id AND c.ordinal = 0
WHERE v.vocab = $classnames AND ik.n_keywords = 0
GROUP BY ik.corpus ORDER BY ik.corpus"""),
    ("Concepts co-occurring with a concept (images sharing both)",
     """WITH vocab AS (SELECT vocab_id FROM vocabularies WHERE vocab = $cooc_concepts),
     ic AS (SELECT sample_id, concept FROM image_concepts JOIN concepts USING (vocab_id, concept_id)
            WHERE vocab_id = (SELECT vocab_id FROM vocab))
SELECT b.concept, count(*) AS images
FROM ic a JOIN ic b ON a.sample_id = b.sample_id AND b.concept <> a.concept
WHERE a.concept = $concept GROUP BY b.concept ORDER BY images DESC, b.concept LIMIT 10"""),
    ("Concept document frequency per class (top 2 per class)",
     """SELECT cc.class, cc.concept, cc.n_images AS images, round(cc.df, 2) AS df
FROM class_concepts cc JOIN vocabularies v USING (vocab_id)
WHERE v.vocab = $concepts AND cc.corpus = $corpus
QUALIFY row_number() OVER (PARTITION BY cc.class ORDER BY cc.n_images DESC, cc.concept) <= 2
ORDER BY cc.class, images DESC, cc.concept LIMIT 12"""),
    ("Captions shared by the most images",
     """SELECT text, count(DISTINCT sample_id) AS images FROM captions WHERE corpus = $corpus
GROUP BY text ORDER BY images DESC, text LIMIT 5"""),
]


def bind(sql: str, names: dict) -> dict:
    """The parameters a query uses, taken from `names` (DuckDB refuses unused named parameters)."""
    return {k: v for k, v in names.items() if re.search(rf"\${k}\b", sql)}
