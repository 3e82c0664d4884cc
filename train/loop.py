"""`clipstore train`: the training loop, top to bottom.

  1. resolve the run (train/run.py): data, starting model, label sources, identity, resume point;
  2. build the trainable model (train/model.py), the method's loss module (train/losses.py) and
     AdamW; fill the caches a locked tower reads from (train/caches.py);
  3. for each epoch, for each step: forward, gather across processes, the method's named loss
     terms, backward, average, clip, step, clamp the logit scale, log;
  4. checkpoints (train/state.py) at validation epochs, every `save_every` epochs or
     `save_every_steps` steps, and at the end; validation (train/validate.py) through the
     evaluation stage; finally the `train` artifact with the `train_log` table.
The loop never asks which method runs: a method says what its batches need and returns its terms.
See docs/train.md."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipstore.train import caches, state as states
from clipstore.train.config import TrainConfig
from clipstore.train.data import Schedule, TrainData
from clipstore.train.dist import Dist
from clipstore.train.losses import build_method
from clipstore.train.model import TrainModel
from clipstore.train.optim import build_optimizer, lr_at, seed_step
from clipstore.train.run import Run, prepare, restore
from clipstore.train.tables import TRAIN_LOG, TRAIN_TABLES
from clipstore.train.validate import val_tasks, validate
from clipstore.warehouse.errors import ClipstoreError, InputError
from clipstore.warehouse.lock import check_writable
from clipstore.warehouse.parquet import commit_part_tables
from clipstore.warehouse.store import Artifact, Store

PER_SAMPLE = ("image", "text", "unlabeled")   # features gathered across processes (the rest every process has)
RUN_KIND = "train"


@dataclass
class Context:
    """What a method's hooks see: the resolved run, the model, the data (its items, schedule and
    caches) and the process group."""

    run: Run
    model: TrainModel
    data: TrainData
    dist: Dist


@dataclass
class Outcome:
    """What a training call produced: the final checkpoint (a model spec everywhere), the run
    artifact (train_log, stats) and the final checkpoint's evaluation."""

    checkpoint: Artifact
    run: Artifact
    evaluation: Artifact | None = None
    noop: bool = False
    log: list[dict] = field(default_factory=list)


def train(store: Store | str | Path, config: TrainConfig | None = None, *, resume: str | None = None,
          overrides: dict | None = None, progress: bool = True, wait: bool = False) -> Outcome:
    """Train as `config` says (or continue checkpoint `resume`, whose config it keeps: options in
    `overrides` must agree with it). Under torchrun every process calls this."""
    dist = Dist.start()
    try:
        return _train(store if isinstance(store, Store) else Store(store), config, resume, overrides,
                      progress and dist.main, wait, dist)
    finally:
        dist.close()


def _train(store: Store, config, resume, overrides, progress: bool, wait: bool, dist: Dist) -> Outcome:
    if dist.main:
        check_writable(store.root, wait=wait)          # fail in a second, not after loading the model
    device = dist.device(config.device if config is not None else (overrides or {}).get("device"))
    run = prepare(store, config, resume=resume, overrides=overrides, world=dist.world, device=device)
    cfg, say = run.cfg, _printer(progress)
    done = store.current(RUN_KIND, run.name)
    if done is not None and done.params.get("run") == run.digest:
        ckpt = store.get(done.stats["checkpoint"])
        ev = store.get(done.stats["evaluation"]) if done.stats.get("evaluation") else None
        return Outcome(ckpt, done, ev, noop=True)

    # ---- the trainable model and the method's loss module --------------------------------------
    model = TrainModel(run.loaded.model, cfg.trainable, run.loaded.embed_dim).to(run.loaded.device)
    method = build_method(cfg)

    # ---- data: pixels and tokens for the towers that train, the cache for the locked ones ------
    schedule = Schedule(cfg.seed, len(run.labeled), len(run.unlabeled) if run.unlabeled is not None else 0,
                        cfg.batch_size, cfg.unlabeled_batch if method.uses_unlabeled else 0, dist.world, dist.rank)
    per_epoch, total = schedule.steps_per_epoch, cfg.epochs * schedule.steps_per_epoch
    if per_epoch == 0:
        raise InputError(f"{len(run.labeled)} labeled images make no global batch of {schedule.global_batch}",
                         fix="lower --batch-size")
    locked = {"fingerprints": run.loaded.tower_fingerprints}
    banks, cache_report, ids = caches.fill(store, run.spec, model.cached, run.labeled, run.unlabeled, run.keywords,
                                       write=True, progress=progress, **locked) if dist.main else ({}, {}, {})
    ids = dist.broadcast(ids)
    if not dist.main and model.cached:
        banks, _, _ = caches.fill(store, run.spec, model.cached, run.labeled, run.unlabeled, run.keywords,
                                  write=False, artifact_ids=ids, **locked)
    workers = cfg.workers if cfg.workers is not None else (4 if run.loaded.device.type == "cuda" else 0)
    data = TrainData(run.labeled, run.unlabeled if method.uses_unlabeled else None, schedule, run.loaded.preprocess,
                     run.loaded.tokenizer, run.loaded.device, pixels=not model.image_cached,
                     tokens=not model.text_cached, keywords=run.keywords, targets=run.targets, banks=banks,
                     workers=workers if not model.image_cached else 0,
                     **({"image_source": run.image_source} if run.image_source else {}))

    # ---- the method sees the run (it may add parameters), then the optimiser takes what trains -----
    ctx = Context(run, model, data, dist)
    method.setup(ctx)
    method.to(run.loaded.device)
    optimizer = build_optimizer(torch.nn.ModuleDict({"model": model, "method": method}), cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    # ---- where to start: fresh, or exactly where a checkpoint stopped ---------------------------
    frozen = caches.frozen_digests(model.clip.state_dict(), model.cached)     # the locked towers, as they start
    st = restore(run, model, optimizer, method) if run.resume else \
        {"step": 0, "labeled_seen": 0, "unlabeled_seen": 0, "log": [], "checkpoints": []}
    step, log, saved = st["step"], list(st["log"]), list(st["checkpoints"])
    seen = {"labeled": st["labeled_seen"], "unlabeled": st["unlabeled_seen"]}
    tasks = val_tasks(store, cfg) if dist.main and cfg.validate else []
    if run.resume:
        say(f"resuming {run.name} at step {step} of {total} from {run.resumed_from.artifact_id}")
    else:
        say(f"training {run.name}: {len(run.labeled)} labeled"
            + (f", {len(run.unlabeled)} unlabeled" if data.unlabeled is not None else "")
            + f" images, {cfg.epochs} epochs of {per_epoch} steps, trainable {cfg.trainable}")

    def record(phase: str, metric: str, value: float, **links) -> None:
        log.append({"step": step, "epoch": step / per_epoch, "phase": phase, "metric": metric, "value": float(value),
                    "checkpoint": links.get("checkpoint"), "evaluation": links.get("evaluation")})

    def checkpoint(final: bool) -> Artifact | None:
        """Rank 0 saves (the others wait); the locked towers must be exactly as they started."""
        art = None
        if dist.main:
            if caches.frozen_digests(model.clip.state_dict(), model.cached) != frozen:
                raise ClipstoreError("a locked tower's weights changed during training: its cached features no "
                                     "longer describe the model", fix="report this: the tower should be frozen")
            body = {"epoch": step / per_epoch, "labeled_seen": seen["labeled"], "unlabeled_seen": seen["unlabeled"],
                    "optimizer": optimizer.state_dict(), "extra": model.extra_state(), "method": method.state_dict(),
                    "log": log, "checkpoints": saved, "rng": {"torch": torch.get_rng_state()}, "world": dist.world}
            art = states.save(run, model.deployable_state(), body, step=step, final=final)
            if art.artifact_id not in saved:
                saved.append(art.artifact_id)
        dist.barrier()
        return art

    def validation(ckpt: Artifact | None) -> Artifact | None:
        evaluation = None
        if dist.main and tasks:
            evaluation, values, skipped = validate(store, ckpt, tasks, precision=cfg.precision,
                                                   device=str(run.loaded.device))
            for metric, value in values:
                record("val", metric, value, checkpoint=ckpt.artifact_id,
                       evaluation=evaluation.artifact_id if evaluation else None)
            shown = [f"{m.split('/', 1)[0]} {m.rsplit('/', 1)[1]} {v:.2f}" for m, v in values
                     if m.endswith(("/mR", "/top1"))]
            say(f"  val at step {step}: " + (", ".join(shown) or "nothing to evaluate")
                + (f" ({len(skipped)} task(s) skipped)" if skipped else ""))
        dist.barrier()
        return evaluation

    # ---- the loop -------------------------------------------------------------------------------
    model.train()
    rates: list[float] = []
    for epoch in range(step // per_epoch, cfg.epochs):
        method.on_epoch_start(epoch, ctx)
        sums: dict[str, float] = {}
        steps_here, tick = 0, time.perf_counter()
        for k, batch in data.batches(epoch, start=step - epoch * per_epoch):
            seed_step(cfg.seed, step, dist.rank)
            lr = lr_at(step, cfg.lr, cfg.warmup, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with run.loaded.autocast():
                f = model(batch)
            f = {key: dist.gather(v) if key in PER_SAMPLE else v for key, v in f.items()}
            terms = method(f, batch)
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            dist.average_gradients(params)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            model.clamp_logit_scale(cfg.logit_scale_max)
            step += 1

            # bookkeeping: what was read, how fast, the named terms
            n_unlabeled = len(f["unlabeled"]) if "unlabeled" in f else 0
            seen["labeled"] += len(f["image"])
            seen["unlabeled"] += n_unlabeled
            now = time.perf_counter()
            rate = (len(f["image"]) + n_unlabeled) / max(now - tick, 1e-9)
            tick = now
            if k > 0:                  # the first step of an epoch also waits for the loader to start
                rates.append(rate)
            values = {"loss": loss.item(), **{f"loss/{n}": t.item() for n, t in terms.items()}}
            steps_here += 1
            for n, v in values.items():
                sums[n] = sums.get(n, 0.0) + v
            if step % cfg.log_every == 0 or step == total:
                for n, v in {**values, "lr": lr, "logit_scale": f["logit_scale"].detach().item(), "samples_per_s": rate,
                             "labeled_seen": seen["labeled"], "unlabeled_seen": seen["unlabeled"]}.items():
                    record("train", n, v)
            if cfg.save_every_steps and step % cfg.save_every_steps == 0 and step < total:
                checkpoint(final=False)
                tick = time.perf_counter()      # saving is not training time

        # end of an epoch: report, then checkpoint / validate as configured
        done_epochs = epoch + 1
        means = {name: v / max(1, steps_here) for name, v in sums.items()}
        say(f"epoch {done_epochs}/{cfg.epochs} step {step}: loss {means.get('loss', float('nan')):.4f} ("
            + ", ".join(f"{name[5:]} {v:.4f}" for name, v in means.items() if name.startswith("loss/"))
            + f"), lr {lr:.2e}, scale {model.logit_scale().detach().item():.1f}"
            + (f", {statistics.median(rates):.0f} samples/s" if rates else ""))
        if done_epochs == cfg.epochs:
            break
        validating = cfg.validate and bool(cfg.val_every) and done_epochs % cfg.val_every == 0
        if validating or (cfg.save_every and done_epochs % cfg.save_every == 0):
            ckpt = checkpoint(final=False)
            if validating:
                validation(ckpt)

    # ---- the end: final checkpoint, its validation, the run artifact ----------------------------
    final = checkpoint(final=True)
    evaluation = validation(final)
    outcome = None
    if dist.main:
        summary = {"samples_per_s": round(statistics.median(rates), 1) if rates else None,
                   "labeled_seen": seen["labeled"], "unlabeled_seen": seen["unlabeled"], "features": cache_report}
        art = _publish(run, final, evaluation, log, saved, summary)
        outcome = Outcome(final, art, evaluation, log=log)
        say(f"done: {run.name} -> {final.artifact_id}")
    dist.barrier()
    return outcome if outcome is not None else Outcome(None, None)      # ranks > 0: rank 0 reports


def _publish(run: Run, final: Artifact, evaluation: Artifact | None, log: list[dict], saved: list[str],
             summary: dict) -> Artifact:
    """The `train` artifact: the run's whole train_log, linked to its final checkpoint and evaluation."""
    store, cfg = run.store, run.cfg
    params = {"run": run.digest, "config": cfg.to_dict()}
    inputs = [final] + ([evaluation] if evaluation is not None else [])
    with store.writing(wait=True):
        builder = store.produce(kind=RUN_KIND, name=run.name, stage="train", version=states.STAGE_VERSION,
                                params=params, inputs=inputs, tables=TRAIN_TABLES, config=params)
        if isinstance(builder, Artifact):
            return builder
        with builder.failing_on_error():
            rows = [{"run": builder.artifact_id, "name": run.name, **r} for r in log]
            commit_part_tables(builder, 0, {"train_log": (rows, TRAIN_LOG)})
            last = {r["metric"]: r["value"] for r in log if r["phase"] == "train"}
            stats = {"checkpoint": final.artifact_id, "evaluation": evaluation.artifact_id if evaluation else None,
                     "checkpoints": saved, "parent": run.parent.artifact_id if run.parent else None,
                     "round": run.round, "labeled": len(run.labeled),
                     "unlabeled": len(run.unlabeled) if run.unlabeled is not None else 0,
                     "final_loss": last.get("loss"), **summary}
            return builder.finish(counts={"steps": final.params["step"], "epochs": cfg.epochs, "log_rows": len(rows)},
                                  stats=stats)


def _printer(enabled: bool):
    def say(line: str) -> None:
        if enabled:
            print(line, file=sys.stderr, flush=True)
    return say
