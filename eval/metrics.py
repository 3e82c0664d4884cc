"""The numbers of an evaluation, from unit vectors: zero-shot classification and image-text retrieval.

Ranking rule (everywhere): candidates are ordered by descending cosine score, and equal scores by
ascending candidate index (the order the caller gives: class index, caption order, image order).
The rank of a target is therefore 1 + #(higher score) + #(equal score at a lower index); a hit at
K means rank <= K. Scores are computed in float32 from the stored float16 vectors.

Retrieval protocols:
  all          every caption of an evaluated image is a candidate/query. image->text: rank of the
               image's best-ranked caption (a hit when any of its captions is in the top K);
               text->image: rank of the caption's own image.
  one-caption  the seeds' protocol: one caption per image, drawn with a recorded seed, so the
               problem is N images x N captions.
Both report R@K in both directions, mR (mean of the six R@1/5/10) and the median rank."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STANDARD_K = (1, 5, 10)
CURVE_K = (1, 2, 3, 5, 10, 20, 50, 100)   # recall@K curves in reports
BLOCK = 1024                              # query rows per score block: bounds memory at BLOCK x candidates


def _scores(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    return np.asarray(queries, dtype=np.float32) @ np.asarray(candidates, dtype=np.float32).T


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of candidate targets[i] in row i of scores under the ranking rule."""
    rows = np.arange(len(targets))
    s_t = scores[rows, targets][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    ahead = (scores > s_t) | ((scores == s_t) & (cols < targets[:, None]))
    return ahead.sum(axis=1) + 1


def best_candidates(scores: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Per row, the candidate of its group ranked first (highest score, then lowest index): the
    image's caption whose rank is the image's rank under the all-captions protocol."""
    out = np.empty(len(groups), dtype=np.int64)
    for i, g in enumerate(groups):
        s = scores[i, g]
        out[i] = g[np.flatnonzero(s == s.max())].min()
    return out


def ranks_image_to_text(images: np.ndarray, captions: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Rank of each image's best-ranked caption among all captions (blocked over images)."""
    order = np.argsort(caption_image, kind="stable")
    bounds = np.searchsorted(caption_image[order], np.arange(len(images) + 1))
    groups = [order[bounds[i]:bounds[i + 1]] for i in range(len(images))]
    if any(len(g) == 0 for g in groups):
        raise ValueError("every evaluated image needs at least one caption")
    ranks = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), BLOCK):
        stop = min(start + BLOCK, len(images))
        s = _scores(images[start:stop], captions)
        best = best_candidates(s, groups[start:stop])
        ranks[start:stop] = target_ranks(s, best)
    return ranks


def ranks_text_to_image(images: np.ndarray, captions: np.ndarray, caption_image: np.ndarray) -> np.ndarray:
    """Rank of each caption's own image among all images (blocked over captions)."""
    ranks = np.empty(len(captions), dtype=np.int64)
    for start in range(0, len(captions), BLOCK):
        stop = min(start + BLOCK, len(captions))
        ranks[start:stop] = target_ranks(_scores(captions[start:stop], images), caption_image[start:stop])
    return ranks


def recall_at(ranks: np.ndarray, ks) -> dict[int, float]:
    return {k: float((ranks <= k).mean() * 100) for k in ks}


def one_caption_per_image(caption_image: np.ndarray, n_images: int, seed: int) -> np.ndarray:
    """Indices of one caption per image (image order), drawn uniformly with numpy's PCG64(seed)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(caption_image, kind="stable")
    bounds = np.searchsorted(caption_image[order], np.arange(n_images + 1))
    counts = np.diff(bounds)
    if (counts == 0).any():
        raise ValueError("every evaluated image needs at least one caption")
    picks = rng.integers(0, counts)
    return order[bounds[:-1] + picks]


@dataclass
class RetrievalResult:
    i2t_ranks: np.ndarray
    t2i_ranks: np.ndarray
    n_images: int
    n_captions: int

    def metrics(self, ks=CURVE_K) -> dict[str, float]:
        """R@K both directions (percent) for the standard K and the curve K up to the candidate count,
        mR over the standard six, median and mean ranks."""
        out: dict[str, float] = {}
        i2t_k = sorted(set(STANDARD_K) | {k for k in ks if k <= self.n_captions})
        t2i_k = sorted(set(STANDARD_K) | {k for k in ks if k <= self.n_images})
        for k, v in recall_at(self.i2t_ranks, i2t_k).items():
            out[f"i2t_R@{k}"] = v
        for k, v in recall_at(self.t2i_ranks, t2i_k).items():
            out[f"t2i_R@{k}"] = v
        out["mR"] = float(np.mean([out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in STANDARD_K]))
        out["i2t_median_rank"] = float(np.median(self.i2t_ranks))
        out["t2i_median_rank"] = float(np.median(self.t2i_ranks))
        out["i2t_mean_rank"] = float(self.i2t_ranks.mean())
        out["t2i_mean_rank"] = float(self.t2i_ranks.mean())
        out["images"] = float(self.n_images)
        out["captions"] = float(self.n_captions)
        return out


def retrieval(images: np.ndarray, captions: np.ndarray, caption_image: np.ndarray, protocol: str = "all",
              seed: int = 0) -> RetrievalResult:
    """images (n, d) and captions (m, d) unit vectors; caption_image[j] = index of caption j's image."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    if protocol == "one-caption":
        chosen = one_caption_per_image(caption_image, len(images), seed)
        captions, caption_image = np.asarray(captions)[chosen], np.arange(len(images))
    elif protocol != "all":
        raise ValueError(f"unknown protocol {protocol!r}")
    return RetrievalResult(ranks_image_to_text(images, captions, caption_image),
                           ranks_text_to_image(images, captions, caption_image), len(images), len(captions))


@dataclass
class ZeroShotResult:
    ranks: np.ndarray               # rank of the true class per image
    predictions: np.ndarray         # top-1 class index per image
    labels: np.ndarray
    n_classes: int
    confusion: np.ndarray = field(init=False)   # [true, predicted] counts

    def __post_init__(self):
        self.confusion = np.zeros((self.n_classes, self.n_classes), dtype=np.int64)
        np.add.at(self.confusion, (self.labels, self.predictions), 1)

    def per_class_accuracy(self) -> np.ndarray:
        """Top-1 accuracy (percent) per class; NaN for a class with no images."""
        support = self.confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(support > 0, np.diag(self.confusion) / np.maximum(support, 1) * 100, np.nan)

    def metrics(self) -> dict[str, float]:
        acc = self.per_class_accuracy()
        return {"top1": float((self.ranks <= 1).mean() * 100), "top5": float((self.ranks <= 5).mean() * 100),
                "balanced_acc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
                "images": float(len(self.labels)), "classes": float(self.n_classes)}


def zeroshot(images: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> ZeroShotResult:
    """images (n, d), class vectors (c, d), true class index per image."""
    labels = np.asarray(labels, dtype=np.int64)
    ranks = np.empty(len(images), dtype=np.int64)
    predictions = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), BLOCK):
        stop = min(start + BLOCK, len(images))
        s = _scores(images[start:stop], classes)
        ranks[start:stop] = target_ranks(s, labels[start:stop])
        predictions[start:stop] = s.argmax(axis=1)     # first maximum: ties go to the lowest class index
    return ZeroShotResult(ranks, predictions, labels, len(classes))
