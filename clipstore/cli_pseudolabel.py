"""`clipstore pseudolabel PRODUCER ...` (one subcommand per producer module of
features/pseudolabels, discovered) and `clipstore pseudolabel audit ARTIFACT`.

A producer module's `add_parser(sub, cli)` receives this module as `cli`: `add_vector_options`
(--split, the model options, --embeddings, --logit-scale, --name, resources), `model_spec(args)`,
`vector_kwargs(args)` (the keyword arguments of resolve_vectors) and `done(what, art, t0)` (the
one summary line, with the audit's headline figures)."""

from __future__ import annotations

import json
import sys
import time

from clipstore.cli_features import _add_model_options


def _store(args, create: bool = True):
    from clipstore.warehouse.store import Store
    return Store(args.store, create=create)


store = _store


def add_vector_options(parser, *, split: bool = True) -> None:
    """The options that say which vectors a producer reads: a split and a model (or embeddings)."""
    g = parser.add_argument_group("vectors")
    if split:
        g.add_argument("--split", required=True, help="the split whose unlabeled images get labels; required")
    g.add_argument("--embeddings", action="append", metavar="ID",
                   help="image embeddings artifact (repeat for each corpus) instead of --model (default: none)")
    g.add_argument("--logit-scale", type=float,
                   help="the model's logit scale s (soft NN temperature 1/s, OT ε = 1/s) (default: the model's own "
                        "with --model, else 100, CLIP's)")
    g.add_argument("--name", help="artifact name (default: SPLIT.PRODUCER.MODEL)")
    _add_model_options(parser.add_argument_group("model (embeds what the split's corpora lack)"))
    g = parser.add_argument_group("resources")
    g.add_argument("--batch-size", type=int, default=64,
                   help="images per forward when embedding what is missing (default: %(default)s)")
    g.add_argument("--workers", type=int, help="image decoding processes when embedding (default: as embed)")


def model_spec(args):
    """The ModelSpec of --model/--checkpoint/--pretrained, or None (then --embeddings names the vectors)."""
    if not args.model and not args.checkpoint:
        return None
    from clipstore.features.models import ModelSpec
    return ModelSpec(model=args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                     allow_download=args.allow_download, precision=args.precision, device=args.device)


def vector_kwargs(args) -> dict:
    """resolve_vectors' keyword arguments from the parsed options."""
    return {"split": args.split, "model": model_spec(args), "embeddings": args.embeddings,
            "batch_size": args.batch_size, "workers": args.workers, "wait": args.wait, "progress": not args.quiet}


def audit_line(audit: dict) -> str:
    """The headline figures of an artifact's audit block, e.g. `match class acc 0.83 (chance 0.10)`."""
    parts = []
    for table, s in (audit or {}).items():
        if "match_class_accuracy" in s:
            parts.append(f"match class acc {s['match_class_accuracy']} (chance {s['chance_of_matched_classes']}, "
                         f"{s['with_class_truth']}/{s['rows']} with truth)")
        elif "precision_micro" in s:
            parts.append(f"keyword precision {s['precision_micro']}, recall {s['recall_micro']} "
                         f"({s['with_keyword_truth']}/{s['rows']} with truth, {s['empty_sets']} empty)")
        else:
            figures = ", ".join(f"{k} {v}" for k, v in s.items() if isinstance(v, (int, float)))[:100]
            parts.append(f"{table}: {figures}")
    return "; ".join(parts) or "no truth to audit against"


def done(what: str, art, t0: float | None = None) -> None:
    from clipstore.cli import summary_line
    counts = ", ".join(f"{k} {v}" for k, v in art.counts.items() if k != "pseudo_calibration")
    print(summary_line(what, art, counts, t0))
    print(f"  audit: {audit_line(art.stats.get('audit'))}")


def cmd_audit(args) -> None:
    from clipstore.features.pseudolabels.audit import audit_artifact
    report = audit_artifact(_store(args, create=False), args.artifact)
    if args.format == "json":
        sys.stdout.write(json.dumps(report, indent=1, default=str) + "\n")
        return
    print(f"audit {report['name']} ({report['producer']}) -> {report['artifact_id']}")
    for table, summary in report["audit"].items():
        print(f"  {table}:")
        for k, v in summary.items():
            print(f"    {k}: {v}")
    if report["calibration"]:
        print("  accuracy against confidence (table, metric, bin, n, mean confidence, value):")
        for c in report["calibration"]:
            print(f"    {c['table_name']} {c['metric']} [{c['confidence_lo']:.1f}, {c['confidence_hi']:.1f}) "
                  f"n={c['n']} conf={c['mean_confidence']:.3f} value={c['value']:.3f}")


def add_parsers(sub) -> None:
    from clipstore.features.pseudolabels import producer_modules
    s = sub.add_parser("pseudolabel", help="materialise pseudo-labels of a split's unlabeled images, and audit them",
                       description="Pseudo-labels as versioned tables with confidence and lineage (pseudo_captions, "
                                   "pseudo_keywords, ...), computed from cached embeddings (embedding what is "
                                   "missing first) and audited against the truth the corpora hold. See "
                                   "docs/pseudolabels.md.")
    group = s.add_subparsers(dest="producer", required=True, metavar="PRODUCER")
    for module in producer_modules():
        module.add_parser(group, sys.modules[__name__])
    a = group.add_parser("audit", help="quality of a pseudo-label artifact against the held-back truth",
                         description="Recompute an artifact's audit from its tables and the corpora's current truth: "
                                     "class accuracy of the matches, keyword precision/recall, accuracy against "
                                     "confidence. Writes nothing.")
    a.add_argument("artifact", metavar="ARTIFACT", help="a pseudo-label artifact (id or name)")
    a.add_argument("--format", choices=["table", "json"], default="table", help="output format (default: %(default)s)")
    a.set_defaults(func=cmd_audit)


__all__ = ["add_vector_options", "model_spec", "vector_kwargs", "done", "audit_line", "store", "time"]
