"""Mining benchmarks, side by side in one run.

1. Throughput over the real RSICD captions (54,605): the per-caption mining map (spaCy nouns and
   noun phrases + YAKE keyphrases of every caption, the work `clipstore mine terms` does) with
   clipstore's process pool vs the single-process loop, on the same texts (target >= 1.7x on
   2 cores). Also timed: the corpus-level YAKE ranking and the vectorised caption x keyword
   matrix vs S-CLIP's per-pair substring test.
2. Query latency: the six example queries of docs/mining.md (mining/examples.py) over a synthetic
   store of 1,000,000 captions (bench/bigstore.py), whose vocabularies are made by the real
   stages (`mine keywords --import`, `mine concepts`); median of 7 runs each (target < 100 ms).

    python bench/mining.py [--store-dir out/bench-1m] [--workers 2] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CLIPSTORE_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(Path(__file__).parent))


def rsicd_captions() -> list[str]:
    from clipstore.ingest.text import normalise_caption
    doc = json.loads((DATA / "rsicd" / "dataset_rsicd.reconstructed.json").read_text())
    return [normalise_caption(s["raw"]) for im in doc["images"] for s in im["sentences"]]


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def throughput(workers: int) -> list[str]:
    from clipstore.mining.keywords import YakeSettings, ranked_entries, run_yake, yake_document
    from clipstore.mining.matching import keyword_form, match_keywords, phrases
    from clipstore.mining.terms import parse_captions, parse_loop

    texts = rsicd_captions()
    n = len(texts)
    t_loop, loop_out = timed(parse_loop, texts)
    t_pool, pool_out = timed(parse_captions, texts, workers)
    assert pool_out == loop_out, "the pool must give exactly the loop's terms"
    t_yake, found = timed(lambda: ranked_entries(run_yake(YakeSettings(), yake_document(texts)[0])))
    keywords = found[0]
    t_vec, (cap, _) = timed(match_keywords, texts, keywords)

    def substring_rule() -> int:  # S-CLIP's test, on the same normalised word forms
        padded = [" " + " | ".join(" ".join(p) for p in phrases(t)) + " " for t in texts[:5000]]
        forms = [keyword_form(k) for k in keywords]
        return sum(1 for c in padded for k in forms if f" {k} " in c)

    t_sub, _ = timed(substring_rule)
    t_sub_all = t_sub * n / 5000
    lines = [f"## mining throughput: {n:,} real RSICD captions ({len(set(texts)):,} distinct), {workers} workers",
             "| contender | seconds | captions/s | ratio |", "|---|---|---|---|",
             f"| per-caption mining, single-process loop | {t_loop:.1f} | {n / t_loop:,.0f} | 1.00 |",
             f"| per-caption mining, clipstore pool ({workers} processes) | {t_pool:.1f} | {n / t_pool:,.0f} | "
             f"**{t_loop / t_pool:.2f}x** (target >= 1.7) |",
             f"| corpus YAKE ranking (top 300, n=2) | {t_yake:.1f} | {n / t_yake:,.0f} | |",
             f"| caption x keyword matrix, S-CLIP substring loop (5,000 captions, extrapolated) | {t_sub_all:.1f} | "
             f"{n / t_sub_all:,.0f} | 1.00 |",
             f"| caption x keyword matrix, vectorised ({cap.size:,} pairs) | {t_vec:.2f} | {n / t_vec:,.0f} | "
             f"**{t_sub_all / t_vec:.1f}x** |"]
    return lines


def build_big_store(root: Path, workers: int):
    import bigstore
    from clipstore.mining.concepts import mine_concepts
    from clipstore.mining.keywords import YakeSettings, ranked_entries, run_yake, yake_document
    from clipstore.mining.sclip_files import import_keywords

    t0 = time.perf_counter()
    store = bigstore.build(root, DATA)
    names = {"keywords": "keywords.bench", "classnames": "classnames.bench", "concepts": "concepts.bench",
             "cooc_concepts": "concepts.bench",
             "split": bigstore.SPLIT, "corpus": bigstore.CORPUS, "concept": "airport"}
    keywords = ranked_entries(run_yake(YakeSettings(), yake_document(rsicd_captions())[0]))[0]
    with tempfile.TemporaryDirectory() as tmp:  # imports of an unchanged ranking are no-ops
        path = Path(tmp) / "yake-300.txt"
        path.write_text("\n".join(keywords))
        import_keywords(store, [path], name=names["keywords"], match_corpora=[bigstore.CORPUS])
        classes = sorted({cls for cls, _ in bigstore.rsicd_entries(DATA)})
        (Path(tmp) / "class-name.txt").write_text("\n".join(classes))
        import_keywords(store, [Path(tmp) / "class-name.txt"], name=names["classnames"],
                        match_corpora=[bigstore.CORPUS], prefix="class-name")
    mine_concepts(store, corpora=[bigstore.CORPUS], name=names["concepts"], workers=workers, progress=False)
    return store, names, time.perf_counter() - t0


def latency(root: Path, workers: int, repeats: int = 7) -> list[str]:
    from clipstore.mining.examples import QUERIES, bind
    from clipstore.warehouse.sql import Session

    store, names, t_build = build_big_store(root, workers)
    lines = []
    with Session(store) as session:
        n = session.query("SELECT count(*) AS n FROM captions").column("n")[0].as_py()
        lines += [f"## query latency: {n:,} captions, {repeats} runs each (store ready in {t_build:.0f}s)",
                  "| query | rows | median ms | target |", "|---|---|---|---|"]
        for title, sql in QUERIES:
            params = bind(sql, names)
            times = []
            for _ in range(repeats):
                t, result = timed(session.query, sql, params)
                times.append(t * 1000)
            median = statistics.median(times)
            verdict = "ok" if median < 100 else "MISSED"
            lines.append(f"| {title} | {result.num_rows} | {median:.0f} | {verdict} (< 100) |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store-dir", type=Path, default=REPO / "out" / "bench-1m",
                    help="where the 1M-caption store is built (reused when present)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    lines = [] if args.skip_throughput else throughput(args.workers)
    if not args.skip_latency:
        lines += [""] + latency(args.store_dir, args.workers)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
