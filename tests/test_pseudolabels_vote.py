"""kNN class votes and concept scores (features/pseudolabels/vote.py, scoring.py) against plain
loops written from their definitions, on small random graphs and vectors."""

import numpy as np
import pytest

from clipstore.features.knn import self_knn
from clipstore.features.pseudolabels.scoring import score_concepts
from clipstore.features.pseudolabels.vote import knn_vote


def loop_vote(neighbors, sims, node_class, n_classes, target):
    weights = np.zeros(n_classes)
    voters = 0
    for j, s in zip(neighbors[target], sims[target]):
        if j >= 0 and node_class[j] >= 0:
            weights[node_class[j]] += (1 + s) / 2
            voters += 1
    if voters == 0:
        return None, 0.0, voters, weights
    dist = weights / weights.sum()
    best = min(range(n_classes), key=lambda c: (-dist[c], c))
    return best, dist[best], voters, dist


def test_vote_equals_the_loop_on_a_real_knn_graph():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    neighbors, sims = self_knn(x, 10, device="cpu")
    node_class = np.where(rng.random(300) < 0.3, rng.integers(0, 5, 300), -1)   # 30 % labeled
    neighbors[3, 7:] = -1                                                       # missing edges
    targets = np.flatnonzero(node_class < 0)
    got = knn_vote(neighbors, sims, node_class, 5, targets)
    for row, t in enumerate(targets):
        label, conf, voters, dist = loop_vote(neighbors, sims, node_class, 5, t)
        assert got.voters[row] == voters
        if label is None:
            assert got.labels[row] == -1 and got.confidence[row] == 0 and not got.distribution[row].any()
        else:
            assert got.labels[row] == label
            np.testing.assert_allclose(got.confidence[row], conf, rtol=1e-6)
            np.testing.assert_allclose(got.distribution[row], dist, rtol=1e-6)
    assert (got.voters == 0).any() and (got.voters > 1).any()   # both cases occurred


def test_ties_go_to_the_lowest_class_and_far_neighbours_weigh_less():
    neighbors = np.array([[1, 2], [0, 2], [0, 1]])
    sims = np.array([[0.5, 0.5], [0.9, 0.1], [0.0, 0.0]], dtype=np.float32)
    got = knn_vote(neighbors, sims, np.array([-1, 2, 1]), 3, np.array([0]))
    assert got.labels.tolist() == [1] and got.confidence[0] == pytest.approx(0.5)
    got = knn_vote(neighbors, np.array([[0.9, 0.1]] * 3, dtype=np.float32), np.array([-1, 2, 1]), 3, np.array([0]))
    assert got.labels.tolist() == [2] and got.confidence[0] == pytest.approx(0.95 / (0.95 + 0.55))


def loop_scores(images, concepts, top, scale):
    out = []
    for v in images.astype(np.float64):
        logits = [scale * float(v @ c) for c in concepts.astype(np.float64)]
        order = sorted(range(len(concepts)), key=lambda j: (-np.float32(logits[j]), j))[:top]
        p = np.exp(np.array(logits) - max(logits))
        out.append((logits, order, p.max() / p.sum()))
    return out


def test_concept_scores_equal_the_loop_in_blocks():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(37, 16)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    concepts = rng.normal(size=(12, 16)).astype(np.float32)
    concepts /= np.linalg.norm(concepts, axis=1, keepdims=True)
    concepts[5] = concepts[2]                                 # a tie: the earlier concept wins
    got = score_concepts(images.astype(np.float16), concepts, 3, block_rows=8)
    for i, (logits, order, conf) in enumerate(loop_scores(images.astype(np.float16), concepts, 3, 100.0)):
        np.testing.assert_allclose(got.logits[i], logits, rtol=1e-4, atol=1e-3)
        assert got.top[i].tolist() == order
        np.testing.assert_allclose(got.confidence[i], conf, rtol=1e-3)
        np.testing.assert_allclose(got.top_logits[i], got.logits[i, order])
    assert 5 not in got.top or 2 in got.top


def test_top_is_clamped_to_the_vocabulary():
    got = score_concepts(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32)[:2], 4)
    assert got.top.shape == (3, 2)
