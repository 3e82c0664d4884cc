"""`clipstore <stage> ...`: one subcommand per stage; each calls the stage's Python API."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from clipstore.warehouse.errors import ClipstoreError


def _store(args, create: bool = True):
    from clipstore.warehouse.store import Store
    return Store(args.store, create=create)


def cmd_ingest(args) -> None:
    from clipstore.ingest.pipeline import ingest
    t0 = time.monotonic()
    art = ingest(_store(args), args.format, args.path, name=args.name, images=args.images,
                 image_map=args.image_map, keep_missing=args.keep_missing, preset=args.preset,
                 shard_size=args.shard_size, workers=args.workers, keep_original=args.keep_original,
                 max_pixels=args.max_pixels, wait=args.wait, progress=not args.quiet)
    c = art.counts
    print(f"ingest {art.name}: {c.get('samples', 0)} samples ({c.get('images', 0)} with image, "
          f"{c.get('caption_only', 0)} caption-only), {c.get('captions', 0)} captions, {c.get('rejects', 0)} rejects "
          f"in {time.monotonic() - t0:.1f}s -> {art.artifact_id}")


def cmd_doctor(args) -> None:
    from clipstore.ingest.doctor import doctor
    report = doctor(args.format, args.path, images=args.images, image_map=args.image_map)
    print(report.render())
    if not report.ok:
        raise SystemExit(2)


def cmd_synth(args) -> None:
    from clipstore.ingest.synth import write_synthetic
    info = write_synthetic(args.dir, seed=args.seed, n_images=args.images, size=args.size)
    print(json.dumps(info, indent=1))


def cmd_split(args) -> None:
    from clipstore.ingest.splits import make_split
    art = make_split(_store(args), args.name, corpora=args.corpus, unlabeled_corpora=args.unlabeled_corpus,
                     labeled_ratio=args.labeled_ratio, seed=args.seed, compat=args.compat, wait=args.wait)
    roles = ", ".join(f"{k} {v}" for k, v in art.counts.items())
    print(f"split {art.name}: {roles} -> {art.artifact_id}")


def cmd_sql(args) -> None:
    from clipstore.warehouse.sql import query, render
    text = render(query(_store(args, create=False), args.query), args.format, args.output)
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


def cmd_show(args) -> None:
    store = _store(args, create=False)
    a = store.get(args.id)
    out = {"artifact_id": a.artifact_id, "kind": a.kind, "name": a.name, "status": a.status,
           "path": str(a.path), "created_at": str(a.created_at), "updated_at": str(a.updated_at),
           "recipe": a.recipe, "recipe_digest": a.recipe_digest, "counts": a.counts, "stats": a.stats,
           "lineage": [{"input": i, "role": r} for i, r in store.lineage(a.artifact_id)],
           "tables": {t: len(store.table_paths(a, t)) for t in sorted({t for _, t, _ in store.parts(a.artifact_id)})}}
    print(json.dumps(out, indent=1, default=str))


def build_parser() -> argparse.ArgumentParser:
    from clipstore.ingest.images import DEFAULT_MAX_PIXELS
    from clipstore.ingest.pipeline import DEFAULT_SHARD_SIZE
    p = argparse.ArgumentParser(prog="clipstore", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--store", default=None, help="store directory (default: $CLIPSTORE_STORE or ./store)")
    p.add_argument("--wait", action="store_true", help="queue behind another writer instead of failing")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from clipstore.ingest.adapters import ADAPTERS
    formats = sorted(ADAPTERS)
    s = sub.add_parser("ingest", help="turn a raw corpus into shards and Parquet tables",
                       description="Ingest a raw corpus: webdataset shards, Parquet tables, rejects with reasons. "
                                   "Re-running processes only new or changed entries.")
    s.add_argument("format", choices=formats, metavar="FORMAT", help=f"one of: {', '.join(formats)}")
    s.add_argument("path", type=Path, metavar="PATH", help="corpus root (standard file names) or the annotation file")
    s.add_argument("--name", help="corpus name in the store (default: FORMAT; imagefolder presets by name)")
    s.add_argument("--images", type=Path, help="image folder, when not the layout's standard one")
    s.add_argument("--image-map", type=Path, help="TSV mapping annotation file names to paths below --images")
    s.add_argument("--keep-missing", action="store_true",
                   help="keep entries whose image is missing as caption-only samples (text mining can start)")
    s.add_argument("--preset", help="imagefolder preset: ucm_cls, whu_rs19, rsscn7, aid, resisc45")
    s.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="entries per shard/part (default %(default)s)")
    s.add_argument("--workers", type=int, default=None, help="decode processes (default: CPU count)")
    s.add_argument("--keep-original", action="store_true", help="store TIFF etc. as original bytes, not PNG")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="decompression-bomb guard: larger images are rejected (default %(default)s)")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("doctor", help="check a raw layout before ingest and say what is missing")
    s.add_argument("format", choices=formats, metavar="FORMAT")
    s.add_argument("path", type=Path, metavar="PATH")
    s.add_argument("--images", type=Path)
    s.add_argument("--image-map", type=Path)
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("synth", help="write the synthetic learnable corpus (captions + classification set)")
    s.add_argument("dir", type=Path)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--images", type=int, default=2000, help="number of images (default %(default)s)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default %(default)s)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("split", help="labeled/unlabeled/val/test manifests over one or more corpora")
    s.add_argument("name")
    s.add_argument("--corpus", action="append", required=True, help="corpus (repeat for several, e.g. RS-ALL)")
    s.add_argument("--unlabeled-corpus", action="append", default=[],
                   help="shift setting: unlabeled images come from these corpora instead")
    s.add_argument("--labeled-ratio", type=float, required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--compat", choices=["sclip"], help="reproduce the S-CLIP code's torch.randperm selection")
    s.set_defaults(func=cmd_split)

    from clipstore import cli_eval, cli_features, cli_mining, cli_store
    cli_mining.add_parsers(sub)
    cli_features.add_parsers(sub)
    cli_store.add_parsers(sub)
    cli_eval.add_parsers(sub)

    s = sub.add_parser("sql", help="read-only SQL over the store")
    s.add_argument("query")
    s.add_argument("--format", default="table", choices=["table", "csv", "json", "parquet"])
    s.add_argument("--output", type=Path)
    s.set_defaults(func=cmd_sql)

    s = sub.add_parser("ls", help="list artifacts")
    s.add_argument("--kind")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("show", help="show one artifact (id or name)")
    s.add_argument("id")
    s.set_defaults(func=cmd_show)
    return p


def exit_code_of(action, *args) -> int:
    """Run a command body; our own errors print as one message (no traceback) with their exit code."""
    try:
        action(*args)
    except ClipstoreError as exc:
        print(f"clipstore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("clipstore: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code_of(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
