"""kNN class votes: each target node's class distribution from the labeled nodes among its
neighbours in a kNN graph, weighted by similarity.

A neighbour j of node i votes for its class with weight (1 + sim_ij)/2 ∈ [0, 1] (the affinity
label propagation uses too: monotone in the cosine and never negative, so a far neighbour counts
little but never against). Neighbours without a class (unlabeled, or a labeled image whose
sample has no class) and missing edges (−1) do not vote. Per target: the distribution over the
classes (weights / their sum), its argmax as the label (ties: the lowest class index), the
winning share as confidence, and the number of voters. A target with no labeled neighbour gets
no label (−1), an empty distribution and confidence 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Votes:
    """Per target row: `distribution` (m, C) float32, `labels` (−1: no voter), `confidence`
    (the winning share), `voters` (labeled neighbours that voted)."""

    distribution: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    voters: np.ndarray


def knn_vote(neighbors: np.ndarray, sims: np.ndarray, node_class: np.ndarray, n_classes: int,
             targets: np.ndarray | None = None) -> Votes:
    """Votes for the `targets` rows (all rows by default) of a graph given as `neighbors` (n, k)
    node rows and `sims` (n, k); `node_class` (n,) is each node's class index, −1 for none."""
    neighbors = np.asarray(neighbors, dtype=np.int64)
    node_class = np.asarray(node_class, dtype=np.int64)
    targets = np.arange(len(neighbors)) if targets is None else np.asarray(targets, dtype=np.int64)
    nb, sm = neighbors[targets], np.asarray(sims, dtype=np.float64)[targets]
    m, k = nb.shape
    cls = np.where(nb >= 0, node_class[np.clip(nb, 0, None)], -1)
    votes = cls >= 0
    weight = np.where(votes, (1.0 + sm) / 2.0, 0.0)
    totals = np.zeros((m, n_classes))
    rows = np.repeat(np.arange(m), k).reshape(m, k)
    np.add.at(totals, (rows[votes], cls[votes]), weight[votes])
    mass = totals.sum(axis=1, keepdims=True)
    voters = votes.sum(axis=1)
    dist = np.divide(totals, mass, out=np.zeros_like(totals), where=mass > 0)
    has = mass[:, 0] > 0          # at least one voter (a voter at cosine −1 weighs 0)
    labels = np.where(has, dist.argmax(axis=1) if n_classes else -1, -1)
    confidence = np.where(has, dist.max(axis=1) if n_classes else 0.0, 0.0)
    return Votes(dist.astype(np.float32), labels.astype(np.int64), confidence.astype(np.float32),
                 voters.astype(np.int32))
