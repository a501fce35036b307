"""Training: the steps (autograd and fused), the epoch loop, multi-task weighting, sampling and data parallelism."""
