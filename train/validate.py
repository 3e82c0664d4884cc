"""Validation through the evaluation stage: retrieval (protocol `all`) on the val role of the
split's corpora (for `--corpus`, that corpus's own val split), zero-shot where those corpora carry
classes, and zero-shot on the `val_zeroshot` classification corpora. The checkpoint is evaluated
as a model spec (`--model <checkpoint id>`) in a run named `eval.<checkpoint id>`, so its metrics
rows (`metrics.name`) point at the checkpoint; tasks that cannot run are skipped and recorded."""

from __future__ import annotations

from clipstore.eval.run import RETRIEVAL, ZEROSHOT, Task, evaluate
from clipstore.features.models import ModelSpec
from clipstore.warehouse.errors import ClipstoreError
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Artifact, Store


def val_tasks(store: Store, cfg) -> list[Task]:
    with Session(store) as session:
        tables = session.tables()
        if cfg.split:
            corpora = session.query("SELECT DISTINCT corpus FROM splits WHERE split = $s AND role = 'val' "
                                    "ORDER BY corpus", {"s": cfg.split}).column("corpus").to_pylist()
        else:
            corpora = [cfg.corpus]
        classed = set(session.query("SELECT DISTINCT corpus FROM samples WHERE class IS NOT NULL").column(
            "corpus").to_pylist()) if "samples" in tables else set()
    tasks = [Task(c, RETRIEVAL, protocol="all", split="val") for c in corpora]
    tasks += [Task(c, ZEROSHOT, templates=cfg.val_templates, split="val") for c in corpora if c in classed]
    tasks += [Task(c, ZEROSHOT, templates=cfg.val_templates) for c in cfg.val_zeroshot]
    return tasks


def validate(store: Store, checkpoint: Artifact, tasks: list[Task], *, precision: str | None, device: str,
             progress: bool = False) -> tuple[Artifact | None, list[tuple[str, float]], list]:
    """(evaluation artifact, [(metric name, value)], skipped tasks) for one checkpoint."""
    if not tasks:
        return None, [], []
    spec = ModelSpec(model=checkpoint.artifact_id, precision=precision, device=device)
    try:
        out = evaluate(store, spec, tasks, name=f"eval.{checkpoint.artifact_id}", keep_going=True,
                       progress=progress, wait=True)
    except ClipstoreError as exc:         # no task could run: nothing to validate on
        return None, [], [("all", exc.what)]
    with Session(store) as session:
        rows = session.query("SELECT corpus, task, protocol, metric, value FROM metrics WHERE run = $r AND "
                             "class IS NULL ORDER BY corpus, task, protocol, metric",
                             {"r": out.run}).to_pylist()
    values = [(f"{r['corpus']}/{r['task']}/{r['protocol']}/{r['metric']}", float(r["value"])) for r in rows]
    return out.artifact, values, out.skipped
