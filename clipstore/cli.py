"""`clipstore <stage> ...`: one subcommand per stage; each calls the stage's Python API.

The shared options (--store, --wait, -q) are accepted before or after any subcommand name; given in
both places, the one after the subcommand wins. A subcommand module adds its parsers with one
`add_parsers(sub)` call and gets the shared options and the help formatter without asking."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from clipstore.warehouse.errors import ClipstoreError


class HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help unless the text already states one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or not action.option_strings or default is None
                or default is argparse.SUPPRESS or isinstance(default, bool) or default in ([], ())):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """clipstore's parser class; subparsers inherit it (argparse passes the parent's class on)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_shared_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """--store, --wait, -q. Below the top level they default to SUPPRESS, so a subcommand's
    namespace only carries them when given there, and then overrides the top level's value."""
    given = parser._option_string_actions  # a subcommand that defines one itself keeps its own
    g = parser.add_argument_group("shared options (before or after the subcommand)")
    if "--store" not in given:
        g.add_argument("--store", metavar="DIR", default=None if top else argparse.SUPPRESS,
                       help="store directory (default: $CLIPSTORE_STORE, else ./store)")
    if "--wait" not in given:
        g.add_argument("--wait", action="store_true", default=False if top else argparse.SUPPRESS,
                       help="queue behind another writer instead of failing (default: fail at once)")
    if "-q" not in given and "--quiet" not in given:
        g.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                       help="no progress bars (default: bars on stderr)")


def subparsers_of(parser: argparse.ArgumentParser):
    """Every parser below `parser` (depth first), e.g. `mine` and `mine keywords`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                yield child
                yield from subparsers_of(child)


def _store(args, create: bool = True):
    from clipstore.warehouse.store import Store
    return Store(args.store, create=create)


def summary_line(what: str, art, details: str, t0: float | None = None) -> str:
    """One line per stage call: what it made, or that it was already up to date (Artifact.noop)."""
    if getattr(art, "noop", False):
        return f"{what}: up to date ({details}) -> {art.artifact_id}"
    took = f" in {time.monotonic() - t0:.1f}s" if t0 is not None else ""
    return f"{what}: {details}{took} -> {art.artifact_id}"


def cmd_ingest(args) -> None:
    from clipstore.ingest.pipeline import ingest
    t0 = time.monotonic()
    art = ingest(_store(args), args.format, args.path, name=args.name, images=args.images,
                 image_map=args.image_map, keep_missing=args.keep_missing, preset=args.preset,
                 shard_size=args.shard_size, workers=args.workers, keep_original=args.keep_original,
                 max_pixels=args.max_pixels, max_bytes=args.max_bytes, wait=args.wait, progress=not args.quiet,
                 replace=args.replace, ray=args.ray)
    from clipstore.ingest.naming import corpus_name, describe
    named = describe(*corpus_name(args.format, args.path, args.name, args.preset), args.path)
    if named:
        print(named)
    c = art.counts
    details = (f"{c.get('samples', 0)} samples ({c.get('images', 0)} with image, "
               f"{c.get('caption_only', 0)} caption-only), {c.get('captions', 0)} captions, "
               f"{c.get('rejects', 0)} rejects")
    print(summary_line(f"ingest {art.name}", art, details, t0))


def cmd_doctor(args) -> int:
    from clipstore.ingest.doctor import doctor
    report = doctor(args.format, args.path, images=args.images, image_map=args.image_map)
    print(report.render())
    return 0 if report.ok else 2


def cmd_synth(args) -> None:
    from clipstore.ingest.synth import write_synthetic
    info = write_synthetic(args.dir, seed=args.seed, n_images=args.images, size=args.size, domain=args.domain,
                           n_classification=args.classification_images)
    print(json.dumps(info, indent=1))


def cmd_split(args) -> None:
    from clipstore.ingest.splits import make_split
    art = make_split(_store(args), args.name, corpora=args.corpus, unlabeled_corpora=args.unlabeled_corpus,
                     labeled_ratio=args.labeled_ratio, seed=args.seed, compat=args.compat, extend=args.extend,
                     wait=args.wait)
    roles = ", ".join(f"{k} {v}" for k, v in art.counts.items())
    print(summary_line(f"split {art.name}", art, roles))


def cmd_sql(args) -> None:
    from clipstore.warehouse.sql import Session, parse_params, render
    params = parse_params(args.param)
    with Session(_store(args, create=False)) as session:
        table = session.query_text_params(args.query, params)
    text = render(table, args.format, args.output)
    if text is not None:
        sys.stdout.write(text)


def cmd_ls(args) -> None:
    from clipstore.warehouse.sql import format_table
    import pyarrow as pa
    store = _store(args, create=False)
    listed = store.overview("WHERE kind = ?", [args.kind]) if args.kind else store.overview()
    rows = [{"current": "*" if v.current else "", "artifact_id": v.artifact.artifact_id, "kind": v.artifact.kind,
             "name": v.artifact.name, "state": v.state, "updated": v.artifact.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
             "counts": ", ".join(f"{k}={n}" for k, n in v.artifact.counts.items() if not isinstance(n, dict))[:70]}
            for v in listed]
    if not rows:
        print("(the store is empty)" if not args.kind else f"(no {args.kind} artifacts)")
        return
    sys.stdout.write(format_table(pa.Table.from_pylist(rows)))


def build_parser() -> argparse.ArgumentParser:
    from clipstore import __version__
    from clipstore.ingest.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, byte_size
    from clipstore.ingest.pipeline import DEFAULT_SHARD_SIZE
    from clipstore.warehouse.raydata import ADDRESS_HELP, INSTALL
    p = Parser(prog="clipstore", description="clipstore: a data-centric preprocessing and feature store for "
                                             "adapting CLIP to specialist domains.",
               epilog="`clipstore COMMAND --help` explains a command and its options; docs/cli.md the conventions.")
    p.add_argument("--version", action="version", version=f"clipstore {__version__}",
                   help="print the installed version and exit")
    add_shared_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from clipstore.ingest.adapters import ADAPTERS
    formats = sorted(ADAPTERS)
    s = sub.add_parser("ingest", help="turn a raw corpus into shards and Parquet tables",
                       description="Ingest a raw corpus: webdataset shards, Parquet tables, rejects with reasons. "
                                   "Re-running processes only new or changed entries.")
    s.add_argument("format", choices=formats, metavar="FORMAT", help=f"one of: {', '.join(formats)}")
    s.add_argument("path", type=Path, metavar="PATH", help="corpus root (standard file names) or the annotation file")
    s.add_argument("--name", help="corpus name in the store (default: FORMAT; for karpathy, jsonl, imagefolder "
                                  "and hf: --preset, else the folder's name; imagefolder presets by name)")
    s.add_argument("--images", type=Path, help="image folder (default: the layout's standard one)")
    s.add_argument("--image-map", type=Path,
                   help="TSV mapping annotation file names to paths below --images (default: none)")
    s.add_argument("--keep-missing", action="store_true",
                   help="keep entries whose image is missing as caption-only samples (default: reject them)")
    s.add_argument("--preset", help="imagefolder preset: ucm_cls, whu_rs19, rsscn7, aid, resisc45 "
                                    "(default: from --name)")
    s.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help="entries per shard/part (default %(default)s)")
    s.add_argument("--workers", type=int, default=None,
                   help="decode processes; with --ray, parts built at a time (default: CPU count; with --ray, "
                        "the cluster's CPUs)")
    s.add_argument("--ray", metavar="ADDRESS", help=f"build the parts in Ray tasks on a cluster: {ADDRESS_HELP}; "
                                                    f"same result as without; needs {INSTALL} (default: this machine)")
    s.add_argument("--keep-original", action="store_true",
                   help="store TIFF etc. as original bytes (default: transcode to lossless PNG)")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="decompression-bomb guard: larger images are rejected (default %(default)s)")
    s.add_argument("--replace", action="store_true",
                   help="accept a version that loses more than 10%% of the current version's samples or images, "
                        "or in which no image was found (refused by default)")
    s.add_argument("--max-bytes", type=byte_size, default=DEFAULT_MAX_BYTES, metavar="SIZE",
                   help="larger image files are rejected before they are read, e.g. 2G (default 512M)")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("doctor", help="check a raw layout before ingest and say what is missing",
                       description="Read a raw corpus the way ingest would, write nothing, and report what is "
                                   "present, what is missing and how to fix it. Exit status 2 when not ready.")
    s.add_argument("format", choices=formats, metavar="FORMAT", help=f"one of: {', '.join(formats)}")
    s.add_argument("path", type=Path, metavar="PATH", help="corpus root (standard file names) or the annotation file")
    s.add_argument("--images", type=Path, help="image folder (default: the layout's standard one)")
    s.add_argument("--image-map", type=Path,
                   help="TSV mapping annotation file names to paths below --images (default: none)")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("synth", help="write the synthetic learnable corpus (captions + classification set)",
                       description="Draw top-down scenes whose content determines their captions and class: "
                                   "DIR/captions (karpathy), DIR/classification (imagefolder), DIR/synth.json. "
                                   "--domain source|target draws one of two styled domains with the same classes "
                                   "and grammar (ingested as synth_<domain>, synth_<domain>_cls).")
    s.add_argument("dir", type=Path, metavar="DIR", help="output folder (rewritten)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default %(default)s)")
    s.add_argument("--images", type=int, default=2000, help="number of images (default %(default)s)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default %(default)s)")
    s.add_argument("--domain", choices=("source", "target"), default=None,
                   help="a styled domain: classes told apart by what is on the ground, drawn and worded per "
                        "domain (default: none, the plain corpus whose classes differ by palette)")
    s.add_argument("--classification-images", type=int, default=None, metavar="N",
                   help="images in the classification set (default: 20%% of --images, at least 10)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("split", help="labeled/unlabeled/val/test manifests over one or more corpora",
                       description="Sample ids per role: labeled and unlabeled from the sources' train split, "
                                   "val and test from theirs. Same corpora versions and seed, same manifest.")
    s.add_argument("name", metavar="NAME", help="split name, e.g. rs_all")
    s.add_argument("--corpus", action="append", required=True,
                   help="corpus (repeat for several, e.g. RS-ALL); required")
    s.add_argument("--unlabeled-corpus", action="append", default=[],
                   help="shift setting: unlabeled images come from these corpora instead (default: none)")
    s.add_argument("--labeled-ratio", type=float, required=True, help="share of train images labeled; required")
    s.add_argument("--seed", type=int, required=True, help="selection seed; required")
    s.add_argument("--compat", choices=["sclip"],
                   help="reproduce the S-CLIP code's torch.randperm selection (default: clipstore's own)")
    s.add_argument("--extend", action="store_true",
                   help="grow the current version: keep every role it gave, place only images it lacks "
                        "(default: off, a fresh selection over the corpora as they are)")
    s.set_defaults(func=cmd_split)

    from clipstore import (cli_eval, cli_export, cli_features, cli_mining, cli_pseudolabel, cli_show, cli_store,
                           cli_train, demo, project)
    cli_mining.add_parsers(sub)
    cli_features.add_parsers(sub)
    cli_pseudolabel.add_parsers(sub)
    cli_store.add_parsers(sub)
    cli_export.add_parsers(sub)
    cli_eval.add_parsers(sub)
    cli_train.add_parsers(sub)
    project.add_parsers(sub)
    demo.add_parsers(sub)

    s = sub.add_parser("sql", help="read-only SQL over the store",
                       description="Run one read-only statement over the store's views (samples, captions, "
                                   "splits, keywords, ...) and the catalog tables.")
    s.add_argument("query", metavar="QUERY", help="one SELECT (or EXPLAIN) statement")
    s.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="bind $NAME in the query to VALUE, as text (repeatable; see docs/sql.md; default: none)")
    s.add_argument("--format", default="table", choices=["table", "csv", "json", "parquet"],
                   help="output format (default %(default)s)")
    s.add_argument("--output", type=Path, help="write to this file (default: stdout; parquet needs a file)")
    s.set_defaults(func=cmd_sql)

    s = sub.add_parser("ls", help="list artifacts",
                       description="Every artifact: id, kind, name, state (complete; incomplete = a run stopped "
                                   "before finishing, re-run it to resume; building), counts; * marks the "
                                   "current version of each name.")
    s.add_argument("--kind", help="only this kind: corpus, split, vocabulary, embeddings, ... (default: all)")
    s.set_defaults(func=cmd_ls)

    cli_show.add_parsers(sub)

    for child in subparsers_of(p):
        add_shared_options(child, top=False)
    return p


def exit_code_of(action, *args) -> int:
    """Run a command body; our own errors print as one message (no traceback) with their exit code.
    A body may return an exit status (doctor: 2 when the layout is not ready)."""
    try:
        return action(*args) or 0
    except ClipstoreError as exc:
        print(f"clipstore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clipstore: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:   # a full disk or a read-only store, from whichever writer met it
        from clipstore.warehouse.faults import storage_error
        ns = args[0] if args else None
        err = storage_error(exc, getattr(ns, "store", None), getattr(ns, "command", None))
        if err is None:
            raise
        print(f"clipstore: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    from clipstore.stdio import run_guarded

    def body() -> int:
        args = build_parser().parse_args(argv)
        return exit_code_of(args.func, args)
    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
