"""`clipstore export openclip`: hand a split role or a corpus to open_clip's trainer."""

from __future__ import annotations

import time
from pathlib import Path


def cmd_openclip(args) -> None:
    from clipstore.export import export_openclip
    t0 = time.monotonic()
    done = export_openclip(args.store, args.dir, split=args.split, role=args.role, corpus=args.corpus,
                           shard_size=args.shard_size, overwrite=args.overwrite)
    state = "up to date" if done.up_to_date else f"in {time.monotonic() - t0:.1f}s"
    n = len(done.shards)
    print(f"export openclip {done.label}: {done.samples} samples in {n} shard{'s' if n != 1 else ''} "
          f"({done.bytes / 1e6:.1f} MB) {state} -> {done.path}")
    if done.skipped:
        print(f"  note: {done.skipped} caption-only samples have no image and are not exported")
    print(f"  --train-data '{done.train_data}' --train-num-samples {done.samples}")
    print(f"  note: open_clip needs at least --workers x GPUs shards ({len(done.shards)} here; "
          "a smaller --shard-size gives more)")


def add_parsers(sub) -> None:
    from clipstore.export import DEFAULT_SHARD_SIZE
    p = sub.add_parser("export", help="write a split role or a corpus for a trainer (open_clip webdataset shards)",
                       description="Export samples out of the store for a trainer. The target folder appears "
                                   "complete or not at all; the same store gives byte-identical files.")
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    s = targets.add_parser("openclip", help="webdataset shards + sizes.json for open_clip_train (--train-data)",
                           description="Webdataset shards holding exactly one split role (or one corpus), each "
                                       "sample's members copied byte for byte from its corpus shard; prints "
                                       "open_clip's --train-data pattern and --train-num-samples.")
    s.add_argument("dir", type=Path, metavar="DIR", help="output folder (created; must be new, empty, or an export)")
    g = s.add_argument_group("samples to export (a split role, or a whole corpus)")
    g.add_argument("--split", help="split name, e.g. rs_all (needs --role)")
    g.add_argument("--role", help="role in the split: labeled, unlabeled, val or test")
    g.add_argument("--corpus", help="a whole corpus instead (its samples with an image)")
    s.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help="samples per output shard (default %(default)s)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export of other data in DIR (default: refuse)")
    s.set_defaults(func=cmd_openclip)
