"""Tensor parallelism: rank 0 (the engine) and its workers, over torch.distributed (docs/serving.md)."""
