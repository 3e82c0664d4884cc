"""`clipstore report RUN`: Markdown tables and PNG plots of an evaluation run, written into the
run's folder (`<store>/artifacts/<run>/report/`). Derived from the catalog rows alone, so a report
can be redrawn at any time; files are replaced atomically."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipstore.eval.compare import evaluation_run, run_rows
from clipstore.warehouse import fs
from clipstore.warehouse.store import Store

ZS_COLUMNS = ("top1", "top5", "balanced_acc", "images", "classes")
RET_COLUMNS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10", "mR", "i2t_median_rank",
               "t2i_median_rank", "images", "captions")
_K = re.compile(r"^(i2t|t2i)_R@(\d+)$")


@dataclass
class Report:
    path: Path            # the Markdown file
    plots: list[Path]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if np.isnan(v):
            return "n/a"
        return f"{v:.0f}" if v.is_integer() else f"{v:.2f}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return lines


def _calibration_section(store: Store, run, files: dict, plots) -> list[str]:
    """Accuracy against confidence of the store's current pseudo-label artifacts (their audit's
    `pseudo_calibration` rows) for the corpora this run evaluated, one curve per artifact and metric."""
    from clipstore.warehouse.sql import Session
    corpora = sorted({t.get("corpus") for t in run.params.get("tasks") or [] if t.get("corpus")}) or None
    with Session(store) as session:
        tables = session.tables()
        if not {"pseudo_calibration", "pseudo_captions"} <= tables:
            return ["Pseudo-label accuracy against confidence: no pseudo-label artifacts in the store yet.", ""]
        of_corpora = "SELECT artifact_id FROM pseudo_captions WHERE list_contains($corpora, corpus)"
        if "pseudo_keywords" in tables:     # keyword sets belong to the corpora of their upstream rows
            of_corpora += (" UNION SELECT k.artifact_id FROM pseudo_keywords k JOIN pseudo_captions p "
                           "ON p.artifact_id = k.source_id WHERE list_contains($corpora, p.corpus)")
        rows = session.query(
            "SELECT c.artifact_id, c.producer, c.metric, c.mean_confidence, c.value, c.n, a.name "
            "FROM pseudo_calibration c JOIN artifacts a USING (artifact_id) "
            f"WHERE $corpora IS NULL OR c.artifact_id IN ({of_corpora}) ORDER BY a.name, c.metric, c.bin",
            {"corpora": corpora}).to_pylist()
    if not rows:
        return ["Pseudo-label accuracy against confidence: no pseudo-label artifacts for these corpora yet.", ""]
    curves: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for r in rows:
        curves[f"{r['name']} ({r['metric']})"].append((r["mean_confidence"], r["value"], r["n"]))
    files["pseudolabel_calibration.png"] = plots.calibration_curves(curves)
    return ["## Pseudo-labels: accuracy against confidence", "",
            "From the audit of each current pseudo-label artifact (`pseudo_calibration`): the metric per "
            "confidence bin against the bin's mean confidence; the diagonal is perfect calibration.", "",
            "![pseudo-label calibration](pseudolabel_calibration.png)", ""]


def write_report(store: Store, ref: str, wait: bool = False) -> Report:
    from clipstore.eval import plots   # matplotlib only when a report is drawn
    run = evaluation_run(store, ref)
    rows = run_rows(store, run, "metrics")
    confusion = run_rows(store, run, "confusion")
    out_dir = run.path / "report"
    files: dict[str, bytes] = {}
    zs: dict[tuple, dict] = defaultdict(dict)
    per_class: dict[tuple, dict] = defaultdict(lambda: {"acc": {}, "support": {}})
    ret: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        if r["task"] == "zeroshot":
            key = (r["corpus"], r["split"], r["templates"], r["names"])
            if r["class"] is None:
                zs[key][r["metric"]] = r["value"]
            else:
                per_class[key]["acc" if r["metric"] == "class_acc" else "support"][r["class"]] = r["value"]
        else:
            ret[(r["corpus"], r["split"], r["protocol"], r["seed"])][r["metric"]] = r["value"]

    params = run.params
    md = [f"# Evaluation {run.name}", "",
          f"- run: `{run.artifact_id}`",
          f"- model: `{params.get('model')}` (fingerprint `{str(params.get('fingerprint'))[:16]}`)",
          f"- checkpoint: {params.get('checkpoint') or 'none (registered config or pretrained tag)'}",
          f"- created: {run.created_at:%Y-%m-%d %H:%M} UTC", ""]
    if zs:
        md += ["## Zero-shot classification", "",
               "Top-1/top-5 and balanced accuracy (mean of per-class top-1) in percent.", ""]
        md += _table(["corpus", "split", "templates", "class names", *ZS_COLUMNS],
                     [[*key, *(m.get(c) for c in ZS_COLUMNS)] for key, m in sorted(zs.items())]) + [""]
        for key in sorted(zs):
            corpus, split, templates, names = key
            stem = _slug(f"{corpus}_{split}_{templates}_{names}")
            acc = per_class[key]["acc"]
            order = list(acc)            # class order as stored (class index order)
            support = [int(per_class[key]["support"].get(n, 0)) for n in order]
            title = f"{corpus} ({split}): per-class top-1, templates {templates}, {names} names"
            files[f"{stem}_classes.png"] = plots.class_accuracy_bars(title, order, [acc[n] for n in order], support)
            index = {n: i for i, n in enumerate(order)}
            counts = np.zeros((len(order), len(order)), dtype=np.int64)
            for c in confusion:
                if (c["corpus"], c["split"], c["templates"], c["names"]) == key:
                    counts[index[c["true_class"]], index[c["pred_class"]]] = c["count"]
            files[f"{stem}_confusion.png"] = plots.confusion_matrix(f"{corpus} ({split}): confusion, {templates}",
                                                                    order, counts)
            md += [f"### {corpus}", "", f"![per-class accuracy]({stem}_classes.png)", "",
                   f"![confusion matrix]({stem}_confusion.png)", ""]
    if ret:
        md += ["## Retrieval", "",
               "R@K in percent; `all` = every caption of an image (image→text hit when any of them is in the top K), "
               "`one-caption` = one caption per image drawn with the recorded seed. mR = mean of the six R@1/5/10. "
               "Ties rank the lower caption/image index first.", ""]
        md += _table(["corpus", "split", "protocol", "seed", *RET_COLUMNS],
                     [[*key, *(m.get(c) for c in RET_COLUMNS)] for key, m in sorted(ret.items(), key=str)]) + [""]
        curves: dict[str, dict[str, dict[int, float]]] = {}
        for (corpus, split, protocol, _seed), m in ret.items():
            label = f"{corpus} {split} ({protocol})"
            for metric, value in m.items():
                k = _K.match(metric)
                if k:
                    curves.setdefault(label, {}).setdefault(k.group(1), {})[int(k.group(2))] = value
        files["recall_at_k.png"] = plots.recall_curves(curves)
        md += ["![recall@K curves](recall_at_k.png)", ""]
    skipped = run.stats.get("skipped") or []
    if skipped:
        md += ["## Not evaluated", ""] + [f"- {label}: {why}" for label, why in skipped] + [""]
    md += _calibration_section(store, run, files, plots)
    with store.writing(wait=wait):
        for name, data in files.items():
            fs.atomic_write_bytes(out_dir / name, data)
        fs.atomic_write_bytes(out_dir / "report.md", "\n".join(md).encode("utf-8"))
    return Report(out_dir / "report.md", [out_dir / n for n in files])
