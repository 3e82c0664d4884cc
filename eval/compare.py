"""`clipstore eval compare RUN RUN...`: the headline metrics of several runs side by side, a run per
column, with each later run's delta to the first."""

from __future__ import annotations

import pyarrow as pa

from clipstore.warehouse.errors import InputError
from clipstore.warehouse.parquet import read_parquet
from clipstore.warehouse.store import Artifact, Store

HEADLINE = ("top1", "top5", "balanced_acc", "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10",
            "mR", "i2t_median_rank", "t2i_median_rank")
KEY = ("corpus", "split", "task", "protocol", "names", "seed", "metric")


def evaluation_run(store: Store, ref: str) -> Artifact:
    return store.get(ref, kind="evaluation")


def run_rows(store: Store, run: Artifact, table: str) -> list[dict]:
    """A run's own rows, read from its parts: also for a version that is no longer current (the
    SQL views show current versions only)."""
    return read_parquet(store.table_paths(run, table)).to_pylist()


def run_metrics(store: Store, run: Artifact, metrics: tuple[str, ...] = HEADLINE) -> list[dict]:
    return [r for r in run_rows(store, run, "metrics") if r["class"] is None and r["metric"] in metrics]


def compare(store: Store, refs: list[str]) -> pa.Table:
    """One row per (corpus, split, task, protocol, names, seed, metric) any run has; a column per
    run (its name and id prefix) and `delta <run>` columns against the first run."""
    if len(refs) < 2:
        raise InputError("eval compare needs two or more runs",
                         fix="pass evaluation ids or names (`clipstore ls --kind evaluation`)")
    runs = [evaluation_run(store, r) for r in refs]
    if len({r.artifact_id for r in runs}) < len(runs):
        raise InputError("the same run is given twice", fix="pass distinct evaluation runs")
    labels = _labels(runs)
    table: dict[tuple, dict] = {}
    for run, label in zip(runs, labels):
        for row in run_metrics(store, run):
            key = tuple(row[k] for k in KEY)
            table.setdefault(key, {k: row[k] for k in KEY})[label] = row["value"]
    order = {m: i for i, m in enumerate(HEADLINE)}
    out = []
    for key in sorted(table, key=lambda k: (k[0], k[1], k[2], str(k[3]), str(k[4]), order[k[6]])):
        row = {k: v for k, v in table[key].items() if k not in ("names", "seed")}
        first = table[key].get(labels[0])
        for label in labels:
            row[label] = _round(table[key].get(label))
        for label in labels[1:]:
            value = table[key].get(label)
            row[f"delta {label}"] = _round(value - first) if value is not None and first is not None else None
        out.append(row)
    return pa.Table.from_pylist(out)


def _labels(runs: list[Artifact]) -> list[str]:
    """Column names: the run names, made unique with the id's digest when two runs share a name."""
    names = [r.name for r in runs]
    return [f"{r.name}@{r.artifact_id.rsplit('-', 1)[-1][:6]}" if names.count(r.name) > 1 else r.name for r in runs]


def _round(v):
    return None if v is None else round(float(v), 2)
