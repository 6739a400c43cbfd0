"""The learning-rate schedule: linear warm-up, then cosine decay to zero."""
from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine_factor", "cosine_with_warmup"]


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The multiplier of the peak lr for 0-based optimizer ``step`` of ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``warmup_cosine_factor``; call ``.step()`` after each optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps))
