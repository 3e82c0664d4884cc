"""Features: model registry, embedding cache, exact kNN and FAISS indexes, the kNN graph."""
