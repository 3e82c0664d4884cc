"""Concept scores: each image's logits over a concept vocabulary and its top concepts.

An image's logit for a concept is `scale` times the cosine between the image vector and the
concept's prompt vector ("a photo includes {noun}.", embedded by `clipstore embed --modality
concept`), CLIP's zero-shot classifier with the concepts as classes; `scale` defaults to CLIP's
trained logit scale 100. Top concepts are the k largest logits, ties to the concept listed first
(the vocabulary's rank order), so the result does not depend on the sort. Confidence is the
top concept's softmax probability over the whole vocabulary. Computed in row blocks, so memory
is one block of logits beyond the output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLIP_LOGIT_SCALE = 100.0
BLOCK_ROWS = 4096


@dataclass
class ConceptScores:
    """`logits` (n, m) float32 in vocabulary order; `top` (n, k) concept columns best first and
    `top_logits` (n, k); `confidence` (n,) the top concept's softmax probability."""

    logits: np.ndarray
    top: np.ndarray
    top_logits: np.ndarray
    confidence: np.ndarray


def score_concepts(images: np.ndarray, concepts: np.ndarray, top: int, *, scale: float = CLIP_LOGIT_SCALE,
                   block_rows: int = BLOCK_ROWS) -> ConceptScores:
    """Logits of unit `images` (n, d) against unit `concepts` (m, d) and the `top` best per image
    (clamped to m)."""
    images, concepts = np.asarray(images), np.asarray(concepts, dtype=np.float32)
    n, m = len(images), len(concepts)
    k = int(min(top, m))
    logits = np.empty((n, m), dtype=np.float32)
    best = np.empty((n, k), dtype=np.int64)
    confidence = np.empty(n, dtype=np.float32)
    for i0 in range(0, n, block_rows):
        block = scale * (np.asarray(images[i0:i0 + block_rows], dtype=np.float32) @ concepts.T)
        logits[i0:i0 + len(block)] = block
        # stable sort of the negated logits: equal logits keep vocabulary order
        best[i0:i0 + len(block)] = np.argsort(-block, axis=1, kind="stable")[:, :k]
        shifted = np.exp(block - block.max(axis=1, keepdims=True))
        confidence[i0:i0 + len(block)] = 1.0 / shifted.sum(axis=1)   # exp(max − max) = 1 over the sum
    top_logits = np.take_along_axis(logits, best, axis=1)
    return ConceptScores(logits, best, top_logits, confidence)
