"""Retrieval and zero-shot metrics against a brute-force reference (random data with many exact
ties) and hand-checked tiny cases, including ones where the two retrieval protocols disagree."""

import numpy as np
import pytest

from clipstore.eval import metrics
from clipstore.eval.metrics import one_caption_per_image, retrieval, zeroshot


def exact_vectors(rng, n, d=6):
    """Entries in {-2..2}/4: every dot product is an exact float32, so ties are real ties."""
    return rng.integers(-2, 3, size=(n, d)).astype(np.float32) / 4


def brute_rank(scores_row, targets) -> int:
    """1-based position of the first target when candidates are sorted by (-score, index)."""
    order = sorted(range(len(scores_row)), key=lambda j: (-float(scores_row[j]), j))
    return min(order.index(t) for t in targets) + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_ranks_equal_brute_force_with_ties(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n_images = 37
    caption_image = np.sort(np.concatenate([np.arange(n_images), rng.integers(0, n_images, 60)]))
    rng.shuffle(caption_image)                      # captions of one image need not be adjacent
    images, captions = exact_vectors(rng, n_images), exact_vectors(rng, len(caption_image))
    monkeypatch.setattr(metrics, "BLOCK", 8)        # several score blocks, a ragged last one
    got = retrieval(images, captions, caption_image, "all")
    scores = images @ captions.T
    want_i2t = [brute_rank(scores[i], np.flatnonzero(caption_image == i)) for i in range(n_images)]
    want_t2i = [brute_rank(scores[:, j], [caption_image[j]]) for j in range(len(captions))]
    assert got.i2t_ranks.tolist() == want_i2t
    assert got.t2i_ranks.tolist() == want_t2i
    assert len(set(scores.ravel().tolist())) < scores.size / 10   # the data really are full of ties
    m = got.metrics()
    for k in (1, 5, 10):
        assert m[f"i2t_R@{k}"] == pytest.approx(100 * np.mean(np.array(want_i2t) <= k))
        assert m[f"t2i_R@{k}"] == pytest.approx(100 * np.mean(np.array(want_t2i) <= k))
    assert m["mR"] == pytest.approx(np.mean([m[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]))
    assert m["i2t_median_rank"] == np.median(want_i2t) and m["t2i_median_rank"] == np.median(want_t2i)

    one = retrieval(images, captions, caption_image, "one-caption", seed=seed)
    chosen = one_caption_per_image(caption_image, n_images, seed)
    assert (caption_image[chosen] == np.arange(n_images)).all()   # one caption of each image, in image order
    s1 = images @ captions[chosen].T
    assert one.i2t_ranks.tolist() == [brute_rank(s1[i], [i]) for i in range(n_images)]
    assert one.t2i_ranks.tolist() == [brute_rank(s1[:, j], [j]) for j in range(n_images)]


def test_one_caption_draw_is_recorded_by_its_seed():
    caption_image = np.repeat(np.arange(50), 5)
    a, b = one_caption_per_image(caption_image, 50, 0), one_caption_per_image(caption_image, 50, 0)
    assert a.tolist() == b.tolist()
    assert one_caption_per_image(caption_image, 50, 1).tolist() != a.tolist()
    assert len(set((a % 5).tolist())) > 1                       # not always the first caption


# Hand-checked: images A=(1,0), B=(0,1); captions a0=(0,1) (a bad caption of A), a1=(1,0), b0=(0,1), b1=(.6,.8).
IMAGES = np.array([[1, 0], [0, 1]], dtype=np.float32)
CAPTIONS = np.array([[0, 1], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
CAPTION_IMAGE = np.array([0, 0, 1, 1])


def _seed_choosing(picks):
    for seed in range(200):
        if one_caption_per_image(CAPTION_IMAGE, 2, seed).tolist() == picks:
            return seed
    raise AssertionError(f"no seed draws {picks}")


def test_hand_checked_all_captions_protocol():
    r = retrieval(IMAGES, CAPTIONS, CAPTION_IMAGE, "all")
    # A: a1 scores 1, first. B: b0 scores 1 but a0 also scores 1 at a lower index -> the tie puts B at 2.
    assert r.i2t_ranks.tolist() == [1, 2]
    # a0 -> A scores 0 < B 1: rank 2; a1, b0, b1 find their image first.
    assert r.t2i_ranks.tolist() == [2, 1, 1, 1]
    m = r.metrics()
    assert (m["i2t_R@1"], m["t2i_R@1"], m["i2t_R@5"]) == (50.0, 75.0, 100.0)
    assert m["mR"] == pytest.approx((50 + 100 + 100 + 75 + 100 + 100) / 6)


def test_hand_checked_one_caption_scores_higher_than_all():
    seed = _seed_choosing([1, 3])        # A keeps a1, B keeps b1: both directions perfect
    m = retrieval(IMAGES, CAPTIONS, CAPTION_IMAGE, "one-caption", seed=seed).metrics()
    assert (m["i2t_R@1"], m["t2i_R@1"]) == (100.0, 100.0)     # all-captions protocol: 50 and 75


def test_hand_checked_one_caption_scores_lower_than_all():
    seed = _seed_choosing([0, 3])        # A keeps its bad caption a0
    r = retrieval(IMAGES, CAPTIONS, CAPTION_IMAGE, "one-caption", seed=seed)
    # A: a0 0 < b1 .6 -> 2; B: a0 1 > b1 .8 -> 2. a0 -> B first (rank 2); b1 -> B first.
    assert r.i2t_ranks.tolist() == [2, 2] and r.t2i_ranks.tolist() == [2, 1]
    assert r.metrics()["i2t_R@1"] == 0.0                        # all-captions protocol: 50


def test_retrieval_needs_a_caption_per_image():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval(IMAGES, CAPTIONS[:2], np.array([0, 0]), "all")


def test_zeroshot_hand_checked():
    classes = np.array([[1, 0], [0, 1], [0.8, 0.6]], dtype=np.float32)
    images = np.array([[1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6], [0, 1]], dtype=np.float32)
    labels = np.array([0, 1, 2, 2, 0])
    r = zeroshot(images, classes, labels)
    # image 2 scores (.6, .8, .96) -> class 2; image 3 (.8, .6, 1.0) -> 2; image 4 is class 0 predicted 1
    assert r.predictions.tolist() == [0, 1, 2, 2, 1]
    assert r.ranks.tolist() == [1, 1, 1, 1, 3]
    m = r.metrics()
    assert m["top1"] == 80.0 and m["top5"] == 100.0
    assert r.per_class_accuracy().tolist() == [50.0, 100.0, 100.0]
    assert m["balanced_acc"] == pytest.approx(250 / 3)
    assert r.confusion.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 2]]


def test_zeroshot_ties_go_to_the_lower_class_and_empty_classes_are_not_averaged():
    classes = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)   # classes 0 and 1 prompt identically
    images = np.array([[1, 0], [1, 0]], dtype=np.float32)
    r = zeroshot(images, classes, np.array([1, 0]))
    assert r.predictions.tolist() == [0, 0] and r.ranks.tolist() == [2, 1]
    acc = r.per_class_accuracy()
    assert acc[0] == 100.0 and acc[1] == 0.0 and np.isnan(acc[2])
    assert r.metrics()["balanced_acc"] == 50.0


@pytest.mark.parametrize("seed", [3, 4])
def test_zeroshot_ranks_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    images, classes = exact_vectors(rng, 50), exact_vectors(rng, 7)
    labels = rng.integers(0, 7, 50)
    r = zeroshot(images, classes, labels)
    scores = images @ classes.T
    assert r.ranks.tolist() == [brute_rank(scores[i], [labels[i]]) for i in range(50)]
    assert r.predictions.tolist() == [brute_rank_top(scores[i]) for i in range(50)]


def brute_rank_top(row) -> int:
    return sorted(range(len(row)), key=lambda j: (-float(row[j]), j))[0]
