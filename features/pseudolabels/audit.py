"""Audit of pseudo-labels against the truth the corpora still hold (unlabeled images keep their
captions and classes): one audit function per table, registered with `register_audit(table)`.

An audit function takes (store, rows of its table) and returns (summary, calibration rows): the
summary is the `stats["audit"][table]` block of the artifact and what `clipstore pseudolabel
audit` prints; calibration rows (PSEUDO_CALIBRATION without artifact_id/producer) give a metric
per confidence bin, for the accuracy-against-confidence plot. Rows without truth are left out of
each figure and counted."""

from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import pyarrow as pa

from clipstore.features.pseudolabels.common import classes_by_sample, pseudolabel_artifact, read_table
from clipstore.warehouse.sql import Session
from clipstore.warehouse.store import Store

BINS = 10                     # equal-width confidence bins over [0, 1]
AuditFn = Callable[[Store, pa.Table], tuple[dict, list[dict]]]
AUDITS: dict[str, AuditFn] = {}


def register_audit(table: str):
    """Decorator: `fn(store, rows) -> (summary, calibration rows)` audits `table`."""
    def wrap(fn: AuditFn) -> AuditFn:
        AUDITS[table] = fn
        return fn
    return wrap


def audit_rows(store: Store, rows: dict[str, pa.Table]) -> tuple[dict, list[dict]]:
    """Run the registered audit of every table that has rows: ({table: summary}, calibration rows)."""
    from clipstore.features.pseudolabels import producer_modules
    producer_modules()          # their modules register their audits on import
    summary, calibration = {}, []
    for table, data in rows.items():
        fn = AUDITS.get(table)
        if fn is None or data.num_rows == 0:
            continue
        summary[table], cal = fn(store, data)
        calibration += [{**c, "table_name": table} for c in cal]
    return summary, calibration


def audit_artifact(store: Store, ref: str) -> dict:
    """The audit of a pseudo-label artifact recomputed now from its tables and the current truth."""
    art = pseudolabel_artifact(store, ref)
    rows = {t: read_table(store, art, t) for t in art.tables if t != "pseudo_calibration"}
    summary, calibration = audit_rows(store, rows)
    return {"artifact_id": art.artifact_id, "name": art.name, "producer": art.stats.get("producer"),
            "audit": summary, "calibration": calibration}


def calibration_rows(metric: str, confidence: np.ndarray, value: np.ndarray) -> list[dict]:
    """Mean `value` per equal-width confidence bin (empty bins left out)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    which = np.clip((confidence * BINS).astype(int), 0, BINS - 1)
    out = []
    for b in range(BINS):
        mask = which == b
        if mask.any():
            out.append({"metric": metric, "bin": b, "confidence_lo": b / BINS, "confidence_hi": (b + 1) / BINS,
                        "n": int(mask.sum()), "mean_confidence": float(confidence[mask].mean()),
                        "value": float(value[mask].mean())})
    return out


def _rate(x: np.ndarray) -> float | None:
    return round(float(np.mean(x)), 4) if len(x) else None


# ---- pseudo_captions: the class of the match against the image's own class -------------------------
@register_audit("pseudo_captions")
def audit_captions(store: Store, rows: pa.Table) -> tuple[dict, list[dict]]:
    """Class accuracy of the best match (its class == the image's class), of the weighted vote over
    the kept matches, the chance level of a random labeled match, and calibration by confidence."""
    own = list(zip(rows.column("corpus").to_pylist(), rows.column("sample_id").to_pylist()))
    matches = rows.column("match_sample_ids").to_pylist()
    weights = rows.column("weights").to_pylist()
    # sample ids are unique across corpora: one look-up per corpus involved serves every match
    corpora = set(rows.column("corpus").to_pylist()) | set(rows.column("match_corpus").to_pylist())
    by_sample = classes_by_sample(store, sorted(corpora))

    def class_of(sample: str) -> str | None:
        return by_sample.get(sample)

    truth = [class_of(s) for _, s in own]
    reachable = _labeled_classes(store, set(rows.column("split_id").to_pylist()), by_sample)
    top = [class_of(ms[0]) if ms else None for ms in matches]
    vote = []
    for ms, ws in zip(matches, weights):
        score: Counter = Counter()
        for s, w in zip(ms, ws):
            c = class_of(s)
            if c is not None:
                score[c] += w
        vote.append(max(sorted(score), key=lambda c: score[c]) if score else None)
    has = np.asarray([t is not None and p is not None for t, p in zip(truth, top)], dtype=bool)
    hit = np.asarray([t == p for t, p in zip(truth, top)], dtype=bool)
    vote_hit = np.asarray([t == v for t, v in zip(truth, vote)], dtype=bool)
    confidence = rows.column("confidence").to_numpy(zero_copy_only=False)
    entropy = rows.column("entropy").to_numpy(zero_copy_only=False)
    # chance: predictions with the same class frequencies but independent of the truth
    labeled = Counter(c for c in top if c is not None)
    unlabeled = Counter(t for t in truth if t is not None)
    chance = None
    if has.any():
        n_l, n_u = sum(labeled.values()), sum(unlabeled.values())
        chance = round(sum(unlabeled[c] / n_u * labeled[c] / n_l for c in unlabeled), 4)
    ceiling = np.asarray([t in reachable for t in truth], dtype=bool)
    summary = {"rows": rows.num_rows, "with_class_truth": int(has.sum()),
               # share of the rows with truth whose class some labeled image has: what a perfect match reaches
               "class_ceiling": _rate(ceiling[has]),
               "match_class_accuracy": _rate(hit[has]), "vote_class_accuracy": _rate(vote_hit[has]),
               "chance_of_matched_classes": chance, "classes": len(unlabeled),
               "mean_confidence": _rate(confidence), "mean_entropy": _rate(entropy),
               "mean_similarity": _rate(rows.column("similarity").to_numpy(zero_copy_only=False))}
    calibration = calibration_rows("match_class_accuracy", confidence[has], hit[has]) if has.any() else []
    return summary, calibration


def _labeled_classes(store: Store, split_ids: set, by_sample: dict) -> set:
    """The classes of the labeled samples of these split versions."""
    from clipstore.warehouse.parquet import read_parquet
    classes = set()
    for sid in split_ids - {None}:
        paths = store.table_paths(sid, "splits")
        if paths:
            t = read_parquet(paths, columns=["role", "sample_id"])
            roles, samples = t.column("role").to_pylist(), t.column("sample_id").to_pylist()
            classes |= {by_sample.get(s) for r, s in zip(roles, samples) if r == "labeled"}
    return classes - {None}


# ---- pseudo_keywords: the candidate set against the image's own captions' keywords -----------------
@register_audit("pseudo_keywords")
def audit_keywords(store: Store, rows: pa.Table) -> tuple[dict, list[dict]]:
    """Precision and recall of each candidate set against the keywords the image's own captions
    hold in the same vocabulary (its `image_keywords` row), micro (over all keyword slots) and
    macro (mean over rows), and precision by confidence."""
    vocab_ids = sorted(set(rows.column("vocab_id").to_pylist()))
    with Session(store) as session:
        truth_rows = session.query("SELECT vocab_id, corpus, sample_id, keyword_ids FROM image_keywords "
                                   "WHERE list_contains($vocabs, vocab_id)", {"vocabs": vocab_ids}) \
            if "image_keywords" in session.tables() else None
    truth: dict = {}
    if truth_rows is not None:
        for v, c, s, k in zip(*(truth_rows.column(n).to_pylist() for n in ("vocab_id", "corpus", "sample_id",
                                                                           "keyword_ids"))):
            truth[(v, c, s)] = set(k or [])
    keys = zip(rows.column("vocab_id").to_pylist(), rows.column("corpus").to_pylist(),
               rows.column("sample_id").to_pylist())
    predicted = [set(k or []) for k in rows.column("keyword_ids").to_pylist()]
    known = [truth.get(k) for k in keys]
    has = np.asarray([t is not None for t in known], dtype=bool)
    inter = np.asarray([len(p & t) if t is not None else 0 for p, t in zip(predicted, known)], dtype=np.int64)
    n_pred = np.asarray([len(p) for p in predicted], dtype=np.int64)
    n_true = np.asarray([len(t) if t is not None else 0 for t in known], dtype=np.int64)
    p_rows = has & (n_pred > 0)
    r_rows = has & (n_true > 0)
    precision = np.divide(inter, np.maximum(n_pred, 1))
    recall = np.divide(inter, np.maximum(n_true, 1))
    confidence = rows.column("confidence").to_numpy(zero_copy_only=False)
    summary = {"rows": rows.num_rows, "with_keyword_truth": int(has.sum()), "empty_sets": int((n_pred == 0).sum()),
               "mean_set_size": _rate(n_pred),
               "precision_micro": round(float(inter[p_rows].sum() / n_pred[p_rows].sum()), 4) if p_rows.any() else None,
               "recall_micro": round(float(inter[r_rows].sum() / n_true[r_rows].sum()), 4) if r_rows.any() else None,
               "precision_macro": _rate(precision[p_rows]), "recall_macro": _rate(recall[r_rows]),
               "truth_empty": int((has & (n_true == 0)).sum())}
    confident = p_rows & np.isfinite(confidence)
    calibration = calibration_rows("keyword_precision", confidence[confident], precision[confident]) \
        if confident.any() else []
    return summary, calibration
