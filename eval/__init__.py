"""Evaluation: zero-shot classification and image-text retrieval from the embedding cache, metrics
as catalog rows, comparisons and reports (see docs/eval.md)."""
