"""`clipstore eval zeroshot | retrieval | suite | compare` and `clipstore report`."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _store(args, create: bool = True):
    from clipstore.warehouse.store import Store
    return Store(args.store, create=create)


def _model_spec(args):
    from clipstore.eval.cache import ModelSpec
    return ModelSpec(model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                     allow_download=args.allow_download, precision=args.precision, device=args.device)


def _print_outcome(store, outcome, started: float) -> None:
    import pyarrow as pa
    from clipstore.eval.compare import run_metrics
    from clipstore.warehouse.sql import format_table
    art = outcome.artifact
    rows = [{"corpus": r["corpus"], "split": r["split"], "task": r["task"], "protocol": r["protocol"],
             "metric": r["metric"], "value": round(r["value"], 2)} for r in run_metrics(store, art)]
    sys.stdout.write(format_table(pa.Table.from_pylist(rows), max_rows=1000))
    for label, why in outcome.skipped:
        print(f"skipped {label}: {why}")
    state = "unchanged recipe, nothing recomputed" if art.noop else f"{time.monotonic() - started:.1f}s"
    print(f"eval {art.name}: {art.counts.get('tasks')} task(s) ({state}) -> {art.artifact_id}")
    print(f"  report: clipstore --store {store.root} report {art.artifact_id}")


def cmd_zeroshot(args) -> None:
    from clipstore.eval.run import ZEROSHOT, Task, evaluate
    t0 = time.monotonic()
    store = _store(args)
    task = Task(args.corpus, ZEROSHOT, templates=args.templates, split=args.split, raw_names=args.raw_names)
    _print_outcome(store, evaluate(store, _model_spec(args), [task], name=args.name, progress=not args.quiet,
                                   wait=args.wait), t0)


def cmd_retrieval(args) -> None:
    from clipstore.eval.run import RETRIEVAL, Task, evaluate
    t0 = time.monotonic()
    store = _store(args)
    protocols = ["all", "one-caption"] if args.protocol == "both" else [args.protocol]
    tasks = [Task(args.corpus, RETRIEVAL, protocol=p, split=args.source_split, seed=args.seed) for p in protocols]
    _print_outcome(store, evaluate(store, _model_spec(args), tasks, name=args.name, progress=not args.quiet,
                                   wait=args.wait), t0)


def cmd_suite(args) -> None:
    from clipstore.eval.run import evaluate
    from clipstore.eval.suites import resolve
    t0 = time.monotonic()
    store = _store(args)
    suite = resolve(store, args.suite)
    for task, how in suite.missing:
        print(f"missing {task.label}: corpus {task.corpus} is not ingested; {how}")
    if not suite.tasks:
        from clipstore.warehouse.errors import NotFoundError
        raise NotFoundError(f"no corpus of suite {suite.name} is ingested", where=str(store.root),
                            fix="ingest one with a command listed above")
    outcome = evaluate(store, _model_spec(args), suite.tasks, name=args.name, label=suite.name, keep_going=True,
                       progress=not args.quiet, wait=args.wait)
    _print_outcome(store, outcome, t0)


def cmd_compare(args) -> None:
    from clipstore.eval.compare import compare
    from clipstore.warehouse.sql import render
    text = render(compare(_store(args, create=False), args.runs), args.format, args.output, max_rows=10000)
    if text is not None:
        sys.stdout.write(text)


def cmd_report(args) -> None:
    from clipstore.eval.report import write_report
    report = write_report(_store(args, create=False), args.run, wait=args.wait)
    print(f"report {report.path}")
    for p in report.plots:
        print(f"  plot {p}")


def _model_args(s) -> None:
    g = s.add_argument_group("model (as for `clipstore embed`)")
    g.add_argument("--model", help="open_clip architecture (ViT-B-32, ...), tiny-vit / tiny-rn, or a checkpoint "
                                   "artifact id (default: none; required unless --checkpoint names it)")
    g.add_argument("--pretrained", help="open_clip pretrained tag; downloads need --allow-download")
    g.add_argument("--allow-download", action="store_true", help="allow fetching pretrained weights")
    g.add_argument("--checkpoint", type=Path,
                   help="local weights (.safetensors, torch state dict, clipstore checkpoint)")
    g.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="autocast precision (default: bf16 on GPU)")
    g.add_argument("--device", help="cuda, cuda:1 or cpu (default: cuda when visible)")
    s.add_argument("--name", help="name of the evaluation artifact (default eval.<corpus or suite>.<model>.<recipe "
                                  "digest>; SQL shows the newest run of a name)")


def add_parsers(sub) -> None:
    p = sub.add_parser("eval", help="zero-shot and retrieval metrics from the embedding cache",
                       description="Evaluate a model from cached embeddings (embedding only what is missing). "
                                   "Each run is an evaluation artifact; its numbers are rows of the metrics table.")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="WHAT")

    s = esub.add_parser("zeroshot", help="zero-shot classification of a corpus with class labels")
    s.add_argument("--corpus", required=True, help="a corpus with classes, e.g. ucm_cls; required")
    s.add_argument("--templates", default="aerial",
                   help="template set: aerial, fashion, reclip_rs, default, openai, or a file (default %(default)s)")
    s.add_argument("--raw-names", action="store_true",
                   help="prompt the corpus's own class names, not the normalised ones of `mine classnames`")
    s.add_argument("--split", help="only this split's images (default: every labelled image)")
    _model_args(s)
    s.set_defaults(func=cmd_zeroshot)

    s = esub.add_parser("retrieval", help="image-text retrieval on a split of a caption corpus")
    s.add_argument("--corpus", required=True, help="a caption corpus, e.g. ucm_captions; required")
    s.add_argument("--source-split", default="val",
                   help="split of the corpus (default %(default)s; all = every sample)")
    s.add_argument("--protocol", default="all", choices=["all", "one-caption", "both"],
                   help="all captions (standard), one random caption per image (the seeds'), or both")
    s.add_argument("--seed", type=int, default=0, help="seed of the one-caption draw (default %(default)s)")
    _model_args(s)
    s.set_defaults(func=cmd_retrieval)

    s = esub.add_parser("suite", help="a named suite (rs, fashion, synth) or a TOML file of tasks")
    s.add_argument("suite", metavar="SUITE", help="rs, fashion, synth, or a TOML file of (corpus, task, protocol, "
                                                  "templates) rows")
    _model_args(s)
    s.set_defaults(func=cmd_suite)

    s = esub.add_parser("compare", help="headline metrics of two or more runs side by side, with deltas")
    s.add_argument("runs", nargs="+", metavar="RUN", help="evaluation artifact ids or names")
    s.add_argument("--format", default="table", choices=["table", "csv", "json", "parquet"],
                   help="output format (default %(default)s)")
    s.add_argument("--output", type=Path, help="write to this file (default: stdout; parquet needs a file)")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("report", help="Markdown + PNG plots of an evaluation run, in the run's folder")
    s.add_argument("run", help="evaluation artifact id or name")
    s.set_defaults(func=cmd_report)
