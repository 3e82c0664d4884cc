"""Numerical kernels shared by the stages, with no store access: the log-domain Sinkhorn solver
(pseudo-labels' global OT and the trainer's per-batch OT) and conjugate gradients."""
