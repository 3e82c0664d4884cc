"""`make demo`: the main job, end to end as far as the stages go today.

Ingests the project's real corpora (clipstore.toml) and a synthetic learnable corpus, builds the
RS-ALL split, mines the configured vocabularies, caches embeddings with a small registered model
(no pretrained weights exist on these machines), builds the kNN graph and the near-duplicate
audit, then prints a summary and answers from the store's SQL."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from clipstore.cli import exit_code_of

QUESTIONS = [
    ("Corpora in the store",
     """SELECT corpus, count(*) AS samples, count(*) FILTER (WHERE has_image) AS with_image,
               count(*) FILTER (WHERE NOT has_image) AS caption_only, sum(n_captions) AS captions,
               count(DISTINCT shard) AS shards
        FROM samples GROUP BY corpus ORDER BY corpus"""),
    ("RS-ALL split: samples per role and corpus",
     "SELECT role, corpus, count(*) AS n FROM splits WHERE split = 'rs_all' GROUP BY ALL ORDER BY role, corpus"),
    ("Why entries were rejected",
     """SELECT corpus, regexp_extract(reason, '^[^:(]*') AS reason, count(*) AS n
        FROM rejects GROUP BY ALL ORDER BY n DESC LIMIT 8"""),
    ("Captions shared by the most images (template leakage risk)",
     """SELECT corpus, text, count(DISTINCT sample_id) AS images FROM captions
        GROUP BY ALL ORDER BY images DESC, text LIMIT 5"""),
    ("Distinct captions per corpus",
     """SELECT corpus, count(*) AS captions, count(DISTINCT text) AS distinct_texts,
               round(100.0 * count(DISTINCT text) / count(*), 1) AS pct_distinct
        FROM captions GROUP BY corpus ORDER BY corpus"""),
    ("Images whose size differs from their corpus's usual size",
     "SELECT corpus, count(*) AS n FROM audit_image_sizes GROUP BY corpus ORDER BY corpus"),
    ("Classes of the synthetic classification set",
     "SELECT class, count(*) AS images FROM samples WHERE corpus = 'synth_cls' GROUP BY class ORDER BY class"),
]


def run(store_dir: str, data: str | None, synth_dir: Path, quiet: bool = False) -> None:
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.synth import is_current, write_synthetic
    from clipstore.project import ingest_all, load
    from clipstore.warehouse.sql import query, render
    from clipstore.warehouse.store import Store

    t0 = time.monotonic()
    store = Store(store_dir)
    print(f"== clipstore demo: store {store.root}")
    project = load(data_root=data)
    print(f"-- ingesting {len(project.corpora)} corpora from {project.data_root}")
    ingest_all(store, project, progress=not quiet)
    if not is_current(synth_dir, seed=0):
        print(f"-- writing the synthetic learnable corpus to {synth_dir}")
        write_synthetic(synth_dir, seed=0)
    ingest(store, "karpathy", synth_dir / "captions", name="synth", progress=not quiet)
    ingest(store, "imagefolder", synth_dir / "classification", name="synth_cls", progress=not quiet)
    for title, sql in QUESTIONS:
        print(f"\n-- {title}\n{sql.strip() if len(sql) < 120 else ''}".rstrip())
        sys.stdout.write(render(query(store, sql)))
    features_and_mining(store, project, quiet)
    print(f"\n== done in {time.monotonic() - t0:.1f}s; explore with: clipstore --store {store.root} sql \"...\"")


def features_and_mining(store, project, quiet: bool) -> None:
    from clipstore.features.dedup import audit_near_duplicates
    from clipstore.features.embed import embed
    from clipstore.features.models import ModelSpec
    from clipstore.features.graph import build_knn_graph
    from clipstore.mining.examples import QUERIES, REAL_STORE, bind
    from clipstore.mining.keywords import mine_keywords
    from clipstore.project import embed_all, mine_all
    from clipstore.warehouse.sql import Session, render

    print("\n-- mining the configured vocabularies (keywords, class names, concepts)")
    for art in mine_all(store, project, progress=not quiet):
        print(f"   {art.name:<30} {', '.join(f'{k} {v}' for k, v in art.counts.items())}")
    print("-- caching embeddings (tiny-vit, random init) and the kNN graph")
    for art in embed_all(store, project, progress=not quiet):
        print(f"   {art.name:<30} {art.counts.get('vectors')} vectors")
    # every modality of one corpus: its keywords are mined first, its classes are the synth scenes
    mine_keywords(store, corpora=["synth"], top=100, progress=not quiet)
    for art in embed(store, model=ModelSpec("tiny-vit"), corpus="synth",
                     modality="image,caption,keyword,classname", progress=not quiet):
        print(f"   {art.name:<30} {art.counts.get('vectors')} vectors")
    graph = build_knn_graph(store, "ucm_captions.image.tiny-vit", k=10)
    audit = audit_near_duplicates(store, graph.artifact_id, 0.99)
    print(f"   {graph.name}: {graph.counts.get('edges')} edges; near-duplicate pairs (cos >= 0.99, "
          f"a random model): {audit.counts.get('pairs')}")
    with Session(store) as session:
        for title, sql in QUERIES:
            print(f"\n-- {title}")
            sys.stdout.write(render(session.query(sql, bind(sql, REAL_STORE))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m clipstore.demo", description=__doc__)
    ap.add_argument("--store", default="store")
    ap.add_argument("--data", default=None, help="data root (default: clipstore.toml's [data].root)")
    ap.add_argument("--synth-dir", type=Path, default=Path("out/synth"))
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    return exit_code_of(run, args.store, args.data, args.synth_dir, args.quiet)


if __name__ == "__main__":
    sys.exit(main())
