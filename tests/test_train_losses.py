"""Each loss term against a direct re-computation of its formula on small tensors: the CLIP loss,
S-CLIP's contrastive term over [X; U], the caption-level OT term (plan from POT, the public code's
solver), the keyword partial labels (the public code's per-row loop) and the global-table targets."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from clipstore.train.losses import (Clip, SClip, caption_plan, contrastive, keyword_targets,
                                    soft_cross_entropy)

pytestmark = pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")   # POT at 10 iterations, as S-CLIP


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def log_softmax_row(row):
    m = max(row)
    return [v - m - math.log(sum(math.exp(w - m) for w in row)) for v in row]


def ce(logits, target_index):
    """−log softmax(row)[target], row by row, averaged (plain Python)."""
    return sum(-log_softmax_row(r)[t] for r, t in zip(logits, target_index)) / len(logits)


def sce(logits, targets):
    return sum(-sum(t * lp for t, lp in zip(tr, log_softmax_row(r))) for r, tr in zip(logits, targets)) / len(logits)


def matmul(a, b):
    return [[sum(x * y for x, y in zip(ra, rb)) for rb in b] for ra in a]


def test_soft_cross_entropy_is_the_formula():
    logits = torch.randn(4, 6, dtype=torch.float64)
    targets = torch.softmax(torch.randn(4, 6, dtype=torch.float64), dim=1)
    targets[2] = 0                                     # an empty row counts in the mean with 0
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(sce(logits.tolist(), targets.tolist()), 1e-12)


def test_clip_loss_is_half_the_two_cross_entropies():
    x, t, s = unit(5, 8, seed=1), unit(5, 8, seed=2), torch.tensor(30.0, dtype=torch.float64)
    z = [[s.item() * v for v in row] for row in matmul(x.tolist(), t.tolist())]
    zt = [list(col) for col in zip(*z)]
    want = (ce(z, range(5)) + ce(zt, range(5))) / 2
    assert Clip()({"image": x, "text": t, "logit_scale": s}, {})["contrastive"].item() == pytest.approx(want, 1e-12)


def test_sclip_contrastive_puts_unlabeled_images_in_the_text_softmax_only():
    x, t, u, s = unit(4, 8, seed=1), unit(4, 8, seed=2), unit(3, 8, seed=3), 20.0
    per_image = [[s * v for v in row] for row in matmul(x.tolist(), t.tolist())]
    per_text = [[s * v for v in row] for row in matmul(t.tolist(), x.tolist() + u.tolist())]
    want = (ce(per_image, range(4)) + ce(per_text, range(4))) / 2
    got = contrastive(x, t, torch.tensor(s, dtype=torch.float64), u).item()
    assert got == pytest.approx(want, 1e-12)
    assert contrastive(x, t, torch.tensor(s, dtype=torch.float64)).item() != pytest.approx(want, 1e-6)


def test_caption_plan_matches_pots_sinkhorn_with_the_public_codes_settings():
    u, x, s = unit(6, 8, seed=4), unit(5, 8, seed=5), torch.tensor(100.0, dtype=torch.float64)
    cost = 1 - u.numpy() @ x.numpy().T
    reference = ot.bregman.sinkhorn(np.full(6, 1 / 6), np.full(5, 1 / 5), cost, reg=1 / 100, numItermax=10)
    reference = reference / reference.sum(axis=1, keepdims=True)
    plan = caption_plan(u, x, s, iters=10)
    assert np.allclose(plan.numpy(), reference, atol=1e-9)
    assert np.allclose(plan.sum(1).numpy(), 1)


def batch_for(n_labeled, n_keywords, seed=0):
    rng = np.random.default_rng(seed)
    labels = torch.as_tensor(rng.random((n_labeled, n_keywords)) < 0.3)
    labels[0] = False                                   # a caption without any keyword of the vocabulary
    labels[1] = False
    labels[1, 2] = True                                 # exactly one
    return {"keyword_labels": labels}


def public_keyword_targets(u, w, s, candidate_rows):
    """S-CLIP's custom/loss.py loop: one-hot for one candidate, sim / sim.sum() for several."""
    q = torch.zeros(len(u), len(w), dtype=torch.float64)
    for j, cands in enumerate(candidate_rows):
        cands = cands.nonzero().flatten().tolist()
        if len(cands) == 1:
            q[j, cands[0]] = 1
        elif cands:
            sim = torch.stack([s * u[j] @ w[k] for k in cands])
            for i, k in enumerate(cands):
                q[j, k] = sim[i] / sim.sum()
    return q


def test_sclip_terms_equal_a_direct_recomputation():
    x, t, u, w = unit(5, 8, seed=6), unit(5, 8, seed=7), unit(4, 8, seed=8), unit(7, 8, seed=9)
    s = torch.tensor(50.0, dtype=torch.float64)
    batch = batch_for(5, 7)
    terms = SClip()({"image": x, "text": t, "unlabeled": u, "keywords": w, "logit_scale": s}, batch)
    assert set(terms) == {"contrastive", "caption", "keyword"}

    plan = ot.bregman.sinkhorn(np.full(4, 1 / 4), np.full(5, 1 / 5), 1 - u.numpy() @ x.numpy().T, reg=1 / 50,
                               numItermax=10)
    pi = plan / plan.sum(axis=1, keepdims=True)
    logits = [[50.0 * v for v in row] for row in matmul(u.tolist(), t.tolist())]
    assert terms["caption"].item() == pytest.approx(sce(logits, pi.tolist()) / 2, 1e-9)

    nearest = pi.argmax(axis=1)
    q = public_keyword_targets(u, w, s, [batch["keyword_labels"][n] for n in nearest])
    kw_logits = [[50.0 * v for v in row] for row in matmul(u.tolist(), w.tolist())]
    assert terms["keyword"].item() == pytest.approx(sce(kw_logits, q.tolist()) / 2, 1e-9)


@pytest.mark.parametrize("rule", ["linear", "softmax"])
def test_keyword_targets_empty_single_and_several_candidates(rule):
    u, w, s = unit(3, 8, seed=10), unit(5, 8, seed=11), torch.tensor(100.0, dtype=torch.float64)
    cands = torch.tensor([[False] * 5, [False, False, True, False, False], [True, False, True, True, False]])
    q = keyword_targets(u, w, s, cands, rule)
    assert q[0].abs().sum() == 0 and q[1].tolist() == [0, 0, 1, 0, 0]
    sim = (s * u[2] @ w.T)[[0, 2, 3]]
    want = sim / sim.sum() if rule == "linear" else torch.softmax(sim, 0)
    assert torch.allclose(q[2, [0, 2, 3]], want) and q[2, [1, 4]].abs().sum() == 0


def test_global_targets_weight_the_matched_captions():
    x, t, u, w, c = unit(3, 8, seed=12), unit(3, 8, seed=13), unit(2, 8, seed=14), unit(4, 8, seed=15), \
        unit(5, 8, seed=16)
    s = torch.tensor(10.0, dtype=torch.float64)
    weights = torch.tensor([[0.7, 0.3, 0, 0, 0], [0, 0, 0.2, 0.2, 0.6]], dtype=torch.float64)
    kw = torch.tensor([[True, False, False, False], [False, True, True, False]])
    method = SClip(global_targets=True)
    terms = method({"image": x, "text": t, "unlabeled": u, "keywords": w, "targets": c, "logit_scale": s},
                   {"target_weights": weights, "target_keyword_labels": kw})
    logits = [[10.0 * v for v in row] for row in matmul(u.tolist(), c.tolist())]
    assert terms["caption"].item() == pytest.approx(sce(logits, weights.tolist()) / 2, 1e-12)
    q = public_keyword_targets(u, w, s, kw)
    kw_logits = [[10.0 * v for v in row] for row in matmul(u.tolist(), w.tolist())]
    assert terms["keyword"].item() == pytest.approx(sce(kw_logits, q.tolist()) / 2, 1e-12)


def test_ot_grad_lets_the_gradient_through_the_plan():
    def grad(ot_grad):
        u = unit(4, 8, seed=17).requires_grad_(True)
        f = {"image": unit(5, 8, seed=18), "text": unit(5, 8, seed=19), "unlabeled": u,
             "logit_scale": torch.tensor(20.0, dtype=torch.float64)}
        SClip(keyword_loss=False, ot_grad=ot_grad)(f, {})["caption"].backward()
        return u.grad
    assert not torch.allclose(grad(False), grad(True))
    plan = caption_plan(unit(4, 8).requires_grad_(True), unit(5, 8), torch.tensor(20.0))
    assert plan.grad_fn is None or not plan.requires_grad
