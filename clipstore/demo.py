"""`clipstore demo` (`make demo`): the main job, end to end as far as the stages go today.

Ingests the project's corpora (clipstore.toml: the real data) and a synthetic learnable corpus,
builds the configured splits, mines the configured vocabularies, caches embeddings with a small
registered model (no pretrained weights exist on these machines), builds the kNN graph and the
near-duplicate audit, pseudo-labels the synthetic corpus's unlabeled images (nn, soft NN, OT,
keyword sets, each with its audit line), then prints a summary and answers from the store's SQL. Every step is
incremental: a re-run prints "up to date" for each artifact and recomputes nothing."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

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
EXPLORE_SQL = "SELECT corpus, count(*) AS samples FROM samples GROUP BY corpus ORDER BY corpus"


def _report(art) -> None:
    from clipstore.project import summary
    print(f"   {summary(art)}", flush=True)


def ingest_step(store, project, synth_dir: Path, synth_images: int = 2000, quiet: bool = False,
                wait: bool = False) -> list:
    """The project's corpora and splits, then the synthetic corpus (written once per seed and size)."""
    from clipstore.ingest.pipeline import ingest
    from clipstore.ingest.synth import is_current, write_synthetic
    from clipstore.project import ingest_all
    print(f"-- ingesting {len(project.corpora)} corpora from {project.data_root}")
    arts = ingest_all(store, project, progress=not quiet, wait=wait, report=_report)
    if not is_current(synth_dir, seed=0, n_images=synth_images):
        print(f"-- writing the synthetic learnable corpus to {synth_dir}")
        write_synthetic(synth_dir, seed=0, n_images=synth_images)
    for fmt, folder, name in (("karpathy", "captions", "synth"), ("imagefolder", "classification", "synth_cls")):
        arts.append(ingest(store, fmt, synth_dir / folder, name=name, progress=not quiet, wait=wait))
        _report(arts[-1])
    return arts


def ask(store, questions=QUESTIONS) -> None:
    """Print each question and its answer table."""
    from clipstore.warehouse.sql import query, render
    for title, sql in questions:
        print(f"\n-- {title}\n{sql.strip() if len(sql) < 120 else ''}".rstrip())
        sys.stdout.write(render(query(store, sql)))


def features_and_mining(store, project, quiet: bool = False, wait: bool = False) -> None:
    from clipstore.features.dedup import audit_near_duplicates
    from clipstore.features.embed import embed
    from clipstore.features.graph import build_knn_graph
    from clipstore.features.models import ModelSpec
    from clipstore.mining.examples import QUERIES, REAL_STORE, bind
    from clipstore.mining.keywords import mine_keywords
    from clipstore.project import embed_all, mine_all
    from clipstore.warehouse.sql import Session, render

    print("\n-- mining the configured vocabularies (keywords, class names, concepts)")
    mine_all(store, project, progress=not quiet, wait=wait, report=_report)
    print("-- caching embeddings (tiny-vit, random init) and the kNN graph")
    cached = embed_all(store, project, progress=not quiet, wait=wait, report=_report)
    # every modality of one corpus: its keywords are mined first, its classes are the synth scenes
    _report(mine_keywords(store, corpora=["synth"], top=100, progress=not quiet, wait=wait))
    for art in embed(store, model=ModelSpec("tiny-vit"), corpus="synth",
                     modality="image,caption,keyword,classname", progress=not quiet, wait=wait):
        _report(art)
    images = [a for a in cached if a.params.get("modality") == "image"] or \
        [a for a in store.current_all("embeddings") if a.name == "synth.image.tiny-vit"]
    graph = build_knn_graph(store, images[0].artifact_id, k=10, wait=wait)
    audit = audit_near_duplicates(store, graph.artifact_id, 0.99, wait=wait)
    _report(graph)
    _report(audit)
    print(f"   near-duplicate pairs in {graph.name} (cos >= 0.99, a random model): {audit.counts.get('pairs')}")
    with Session(store) as session:
        for title, sql in QUERIES:
            print(f"\n-- {title}")
            sys.stdout.write(render(session.query(sql, bind(sql, REAL_STORE))))


PSEUDOLABEL_SQL = """SELECT producer, count(*) AS images, round(avg(confidence), 3) AS mean_confidence,
               round(avg(entropy), 3) AS mean_entropy, any_value(embeddings_ids[1]) AS from_embeddings
        FROM pseudo_captions WHERE split_id = $split GROUP BY producer ORDER BY producer"""


def pseudolabel_step(store, quiet: bool = False, wait: bool = False) -> list:
    """Pseudo-labels of synth's unlabeled images (a 10 % labeled split), each with its audit line
    against the classes and captions the corpus still holds."""
    from clipstore.cli_pseudolabel import audit_line
    from clipstore.features.models import ModelSpec
    from clipstore.features.pseudolabels.keywords import keyword_labels
    from clipstore.features.pseudolabels.nn import nearest_labels
    from clipstore.features.pseudolabels.ot import transport_labels
    from clipstore.ingest.splits import make_split
    from clipstore.warehouse.sql import query, render
    print("\n-- pseudo-labels of synth's unlabeled images (tiny-vit, random init), audited against the corpus")
    split = make_split(store, "synth_10", corpora=["synth"], labeled_ratio=0.1, seed=0, wait=wait)
    _report(split)
    model, top = ModelSpec("tiny-vit"), min(5, split.counts["labeled"])
    common = {"split": split.name, "model": model, "progress": not quiet, "wait": wait}
    arts = [nearest_labels(store, **common), nearest_labels(store, soft=True, top=top, **common),
            transport_labels(store, top=top, **common)]
    arts.append(keyword_labels(store, source=arts[-1].artifact_id, vocab="keywords.synth", wait=wait))
    for art in arts:
        _report(art)
        print(f"   audit {art.stats.get('producer')}: {audit_line(art.stats.get('audit'))}")
    print(f"\n-- Pseudo-labels per producer (clipstore sql)\n{PSEUDOLABEL_SQL}")
    sys.stdout.write(render(query(store, PSEUDOLABEL_SQL, {"split": split.artifact_id})))
    return arts


def evaluation_step(store, quiet: bool = False, wait: bool = False) -> None:
    """The synth suite (zero-shot on synth_cls, retrieval on synth's val split) from the cache,
    and its report: Markdown + plots in the run's folder."""
    from clipstore.eval.report import write_report
    from clipstore.eval.run import evaluate
    from clipstore.eval.suites import resolve
    from clipstore.features.models import ModelSpec
    suite = resolve(store, "synth")
    print(f"\n-- evaluating tiny-vit on the {suite.name} suite (zero-shot + retrieval from the embedding cache)")
    outcome = evaluate(store, ModelSpec("tiny-vit"), suite.tasks, label=suite.name, keep_going=True,
                       progress=not quiet, wait=wait)
    _report(outcome.artifact)
    report = write_report(store, outcome.run, wait=wait)
    print(f"   report: {report.path} ({len(report.plots)} plots)")


def cli_command() -> str:
    """How to run clipstore from this shell, as it must be typed: plain `clipstore` when the shell
    finds this environment's script, else the script's path (e.g. `.venv/bin/clipstore`)."""
    script = Path(sys.executable).parent / "clipstore"
    found = shutil.which("clipstore")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "clipstore"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def closing_hint(store_root: Path) -> str:
    command = cli_command()
    line = f"explore with: {command} --store {store_root} sql \"{EXPLORE_SQL}\""
    if command != "clipstore":
        line += f"\n   (or run `source {Path(command).parent}/activate` once, then type plain `clipstore`)"
    return line


def run(store_dir: str | None, data: str | None, synth_dir: Path, quiet: bool = False,
        config: Path | None = None, synth_images: int = 2000, wait: bool = False) -> None:
    from clipstore.project import DEFAULT_CONFIG, load
    from clipstore.warehouse.store import Store

    t0 = time.monotonic()
    project = load(config or DEFAULT_CONFIG, data_root=data)
    store = Store(store_dir)
    print(f"== clipstore demo: store {store.root}")
    ingest_step(store, project, synth_dir, synth_images=synth_images, quiet=quiet, wait=wait)
    ask(store)
    features_and_mining(store, project, quiet, wait=wait)
    pseudolabel_step(store, quiet, wait=wait)
    evaluation_step(store, quiet, wait=wait)
    print(f"\n== done in {time.monotonic() - t0:.1f}s; {closing_hint(store.root)}")


def cmd_demo(args) -> None:
    run(args.store, args.data, args.synth_dir, quiet=args.quiet, config=args.config,
        synth_images=args.synth_images, wait=args.wait)


def add_parsers(sub) -> None:
    from clipstore.project import DEFAULT_CONFIG
    s = sub.add_parser("demo", help="the main job end to end on the project's data, with a summary and SQL answers",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    s.add_argument("--config", type=Path, metavar="FILE", default=DEFAULT_CONFIG,
                   help=f"project file (default: ./{DEFAULT_CONFIG})")
    s.add_argument("--data", metavar="DIR", help="data root (default: $CLIPSTORE_DATA, else [data].root of the "
                                                 "project file)")
    s.add_argument("--synth-dir", type=Path, default=Path("out/synth"), metavar="DIR",
                   help="where the synthetic corpus is written (default: %(default)s)")
    s.add_argument("--synth-images", type=int, default=2000, metavar="N",
                   help="images in the synthetic corpus (default: %(default)s)")
    s.set_defaults(func=cmd_demo)
