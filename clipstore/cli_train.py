"""`clipstore train`: the trainer's subcommand. Every option defaults to "not given" so that only
what the command line says overrides the TOML file (`--config`) and the dataclass defaults
(train/config.py); the help shows those defaults. Under torchrun, `python -m clipstore train ...`
runs in every process."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

S = argparse.SUPPRESS


def _defaults():
    from clipstore.train.config import TrainConfig
    return TrainConfig()


def add_parsers(sub) -> None:
    from clipstore.train.config import KEYWORD_TARGETS, METHODS, TRAINABLE
    d = _defaults()
    s = sub.add_parser("train", help="fine-tune CLIP (clip) or S-CLIP (sclip) on a corpus or a split",
                       description="Train from a model spec or checkpoint artifact to checkpoint artifacts (usable "
                                   "as --model everywhere), logging per-term losses, lr, samples/s and validation "
                                   "metrics to the train_log table. Options override --config; see docs/train.md.")
    s.add_argument("--config", type=Path, metavar="FILE", default=S,
                   help="TOML file of training options (keys as below, with underscores; default: none)")
    s.add_argument("--resume", metavar="CHECKPOINT", default=S,
                   help="continue this checkpoint artifact's run exactly, with its config (default: a re-run of a "
                        "stopped command continues from its latest checkpoint by itself)")
    g = s.add_argument_group("what to train on")
    g.add_argument("--method", choices=METHODS, default=S, help=f"loss module (default: {d.method})")
    g.add_argument("--corpus", default=S, help="train on every captioned image of this corpus (default: none)")
    g.add_argument("--split", default=S, help="train on this split's labeled role, plus its unlabeled role for "
                                               "sclip (default: none)")
    g = s.add_argument_group("model")
    g.add_argument("--model", default=S, help="architecture (tiny-vit, ViT-B-32, RN50) or checkpoint artifact "
                                               "(default: none)")
    g.add_argument("--pretrained", default=S, help="open_clip pretrained tag (default: none)")
    g.add_argument("--checkpoint", default=S, help="weights file to start from (default: none)")
    g.add_argument("--init-from", dest="init_from", metavar="CHECKPOINT", default=S,
                   help="checkpoint artifact (or file) to start from: the new run's parent (default: none)")
    g.add_argument("--allow-download", dest="allow_download", action="store_true", default=S,
                   help="fetch a pretrained tag's weights when not cached (default: off)")
    g.add_argument("--trainable", choices=TRAINABLE, default=S,
                   help=f"what trains: all, text (image tower locked, its features from the cache), image, heads "
                        f"(adapters on both caches), ln (LayerNorms) (default: {d.trainable})")
    g.add_argument("--precision", choices=["fp32", "bf16"], default=S,
                   help="autocast precision (default: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--device", default=S, help="cpu, cuda, cuda:N (default: cuda when visible; one GPU per process "
                                               "under torchrun)")
    g.add_argument("--pixel-cache", dest="pixel_cache", choices=["off", "use"], default=S,
                   help="read decoded pixels from the corpora's pixel caches (clipstore pixels) instead of the "
                        "shards (default: off)")
    g.add_argument("--pixel-size", dest="pixel_size", type=int, default=S,
                   help="the pixel cache's square size, e.g. 72 for headroom (default: the model's eval geometry)")
    g = s.add_argument_group("optimisation")
    for flag, key, kind, text in (
            ("--epochs", "epochs", int, "passes over the labeled images"),
            ("--batch-size", "batch_size", int, "labeled images per process and step"),
            ("--unlabeled-batch-size", "unlabeled_batch_size", int, "unlabeled images per process and step "
                                                                    "(default: --batch-size)"),
            ("--lr", "lr", float, "peak learning rate"), ("--wd", "weight_decay", float, "AdamW weight decay"),
            ("--warmup", "warmup", int, "linear warm-up steps before the cosine decay"),
            ("--grad-clip", "grad_clip", float, "max gradient norm, 0 = off"),
            ("--seed", "seed", int, "seed of every draw (order, captions, augmentation, random init)"),
            ("--workers", "workers", int, "image decoding processes (default: 0 on CPU, 4 on GPU)")):
        default = getattr(d, key)
        g.add_argument(flag, dest=key, type=kind, default=S,
                       help=text if "default" in text else f"{text} (default: {default})")
    g = s.add_argument_group("S-CLIP")
    g.add_argument("--unlabeled-negatives", dest="unlabeled_negatives", action=argparse.BooleanOptionalAction,
                   default=S, help="unlabeled images as extra negatives in the text->image softmax (default: on)")
    g.add_argument("--caption-loss", dest="caption_loss", action=argparse.BooleanOptionalAction, default=S,
                   help="the caption-level OT loss (default: on)")
    g.add_argument("--keyword-loss", dest="keyword_loss", action=argparse.BooleanOptionalAction, default=S,
                   help="the keyword partial-label loss (default: on)")
    g.add_argument("--ot-grad", dest="ot_grad", action="store_true", default=S,
                   help="let gradients flow through the OT plan, as the public code does (default: stop-gradient)")
    g.add_argument("--ot-iters", dest="ot_iters", type=int, default=S,
                   help=f"Sinkhorn iterations (default: {d.ot_iters})")
    g.add_argument("--ot-epsilon", dest="ot_epsilon", type=float, default=S,
                   help="entropic regularisation (default: 1 / logit scale)")
    g.add_argument("--caption-targets", dest="caption_targets", metavar="ARTIFACT", default=S,
                   help="take caption targets from this artifact's global OT table pseudo_captions "
                        "(default: per-batch OT)")
    g.add_argument("--vocab", default=S, help="keyword vocabulary (default: keywords.<split>.labeled)")
    g.add_argument("--keyword-targets", dest="keyword_targets", choices=KEYWORD_TARGETS, default=S,
                   help=f"candidates' cosines renormalised linearly or by a softmax (default: {d.keyword_targets})")
    g = s.add_argument_group("validation, checkpoints, naming")
    g.add_argument("--validate", dest="validate", action=argparse.BooleanOptionalAction, default=S,
                   help="validate through the evaluation stage (default: on)")
    g.add_argument("--val-every", dest="val_every", type=int, default=S,
                   help=f"validate every N epochs and at the end; 0 = only at the end (default: {d.val_every})")
    g.add_argument("--val-zeroshot", dest="val_zeroshot", action="append", metavar="CORPUS", default=S,
                   help="also zero-shot on this classification corpus (repeatable; default: none)")
    g.add_argument("--val-templates", dest="val_templates", default=S,
                   help=f"zero-shot template set (default: {d.val_templates})")
    g.add_argument("--save-every", dest="save_every", type=int, default=S,
                   help="checkpoint every N epochs (default: 0 = at validations and the end)")
    g.add_argument("--save-every-steps", dest="save_every_steps", type=int, default=S,
                   help="also checkpoint every N steps, mid-epoch (default: 0 = off)")
    g.add_argument("--log-every", dest="log_every", type=int, default=S,
                   help=f"steps between train_log rows (default: {d.log_every})")
    g.add_argument("--name", default=S, help="the run's name (default: train.<method>.<data>.<model>.<digest>)")
    g.add_argument("--round", type=int, default=S, help="lineage round (default: the parent's round + 1, else 0)")
    s.set_defaults(func=cmd_train)


def cmd_train(args) -> None:
    import os
    from clipstore.train.config import FIELDS, resolve
    from clipstore.warehouse.store import Store
    given = {k: v for k, v in vars(args).items() if k in FIELDS}
    main = int(os.environ.get("RANK", "0")) == 0
    t0 = time.monotonic()
    resume = getattr(args, "resume", None)
    cfg = None if resume else resolve(getattr(args, "config", None), given)
    from clipstore.train.loop import train
    out = train(Store(args.store), cfg, resume=resume, overrides=given, progress=not args.quiet, wait=args.wait)
    if not main:
        return
    st = out.run.stats
    if out.noop:
        print(f"train {out.run.name}: up to date (run {out.run.artifact_id}) -> {out.checkpoint.artifact_id}")
        return
    rate = f", {st['samples_per_s']} samples/s" if st.get("samples_per_s") else ""
    loss = f", final loss {st['final_loss']:.4f}" if st.get("final_loss") is not None else ""
    print(f"train {out.run.name}: {out.run.counts.get('epochs')} epochs, {out.run.counts.get('steps')} steps{loss}"
          f"{rate} in {time.monotonic() - t0:.1f}s (run {out.run.artifact_id}) -> {out.checkpoint.artifact_id}")
