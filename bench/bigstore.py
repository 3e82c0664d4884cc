"""A synthetic store of 1 million captions for query-latency benchmarks.

200,000 samples, each a copy of a real RSICD image entry: its five real captions and its scene
class (from txtclasses_rsicd), so caption texts, duplicates and class structure are RSICD's own,
at twenty times the size. A split `bench` (10% labeled, 70% unlabeled, 10% val, 10% test) sits
beside it. Tables are written straight in the ingest schemas (there are no images to decode)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clipstore.ingest.splits import SPLITS
from clipstore.ingest.tables import CAPTIONS, CORPUS_TABLES, SAMPLES
from clipstore.ingest.text import normalise_caption
from clipstore.warehouse.hashing import text_id
from clipstore.warehouse.parquet import commit_part_tables
from clipstore.warehouse.store import Store

CORPUS, SPLIT = "bench", "bench"
STAGE_VERSION = 1   # bump when the same parameters would give another synthetic store
ROLES = np.array(["labeled", "unlabeled", "val", "test"])


def rsicd_entries(data: Path) -> list[tuple[str, list[str]]]:
    """(class, captions) of every real RSICD image."""
    doc = json.loads((data / "rsicd" / "dataset_rsicd.reconstructed.json").read_text())
    class_of = {}
    for f in sorted((data / "rsicd" / "txtclasses_rsicd").glob("*.txt")):
        for line in f.read_text().split():
            class_of[line.strip()] = f.stem.lower()
    return [(class_of.get(im["filename"], "unknown"), [s["raw"] for s in im["sentences"]]) for im in doc["images"]]


def build(root: Path, data: Path, n_samples: int = 200_000, part_rows: int = 50_000, seed: int = 0) -> Store:
    store = Store(root)
    if store.current("split", SPLIT) is not None:
        return store  # built by an earlier run
    entries = rsicd_entries(data)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(entries), n_samples)
    roles = ROLES[rng.choice(4, n_samples, p=[0.1, 0.7, 0.1, 0.1])]
    with store.writing():
        corpus = store.produce(kind="corpus", name=CORPUS, stage="bench", version=STAGE_VERSION,
                               params={"n": n_samples, "seed": seed}, tables=CORPUS_TABLES, reuse=False)
        split_rows = []
        for part, start in enumerate(range(0, n_samples, part_rows)):
            samples, captions = [], []
            for i in range(start, min(start + part_rows, n_samples)):
                cls, raws = entries[picks[i]]
                key = f"{i:07d}"
                sid, iid = text_id("sample", CORPUS, key), text_id("image", CORPUS, key)
                samples.append({"corpus": CORPUS, "sample_id": sid, "image_id": iid, "source_key": key,
                                "source_index": i, "split": "train", "class": cls, "class_index": None,
                                "n_captions": len(raws), "has_image": True, "shard": None, "meta": None,
                                "part": part})
                for o, raw in enumerate(raws):
                    captions.append({"corpus": CORPUS, "caption_id": text_id("caption", iid, o, raw), "sample_id": sid,
                                     "image_id": iid, "source_key": key, "ordinal": o, "raw": raw,
                                     "text": normalise_caption(raw), "part": part})
                split_rows.append({"split": SPLIT, "role": str(roles[i]), "corpus": CORPUS, "sample_id": sid,
                                   "image_id": iid, "source_key": key, "source_index": i, "position": i})
            commit_part_tables(corpus, part, {"samples": (samples, SAMPLES), "captions": (captions, CAPTIONS)})
        corpus.finish({"samples": n_samples, "captions": int(sum(len(entries[p][1]) for p in picks))})
        split = store.produce(kind="split", name=SPLIT, stage="bench", version=STAGE_VERSION, params={"seed": seed},
                              inputs=[corpus.artifact_id], tables={"splits": {}}, reuse=False)
        commit_part_tables(split, 0, {"splits": (split_rows, SPLITS)})
        split.finish({"rows": len(split_rows)})
    return store
