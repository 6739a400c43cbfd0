"""A toy transformer and a toy task for the LoRA notebooks: small enough to train in seconds on a CPU.

The task: a sequence of random tokens goes in, and at each position the model must output the
token ``shift`` places earlier (``targets = tokens.roll(shift, dims=1)``, wrapping around).
``shift=1`` ("copy the previous token") and ``shift=-1`` ("copy the next token") need opposite
attention patterns, so a model pretrained on one must learn something new to do the other:
that is what the LoRA adapter learns in notebook 02.

The model is built on ``nn.TransformerEncoder``, so its attention is ``nn.MultiheadAttention``
with the packed ``in_proj_weight`` that ``LoRAMultiheadAttention`` adapts. Nothing here knows
about LoRA or SAM 3.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ToyTransformer", "toy_batch", "train_toy", "toy_accuracy"]


class ToyTransformer(nn.Module):
    """Token embedding + learned positions -> ``nn.TransformerEncoder`` -> per-token classifier."""

    def __init__(
        self,
        vocab_size: int = 16,
        seq_len: int = 16,
        dim: int = 32,
        num_heads: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 64,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(seq_len, dim)
        layer = nn.TransformerEncoderLayer(dim, num_heads, dim_feedforward, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L) int64 -> (B, L, V) logits
        positions = torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
        h = self.embed(tokens) + self.pos(positions)  # (B, L, D)
        return self.head(self.encoder(h))  # (B, L, V)


def toy_batch(
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    shift: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random tokens ``(B, L)`` and their targets ``(B, L)``: the token ``shift`` places earlier (wrapping)."""
    tokens = torch.randint(vocab_size, (batch_size, seq_len), generator=generator)  # (B, L)
    targets = tokens.roll(shift, dims=1)  # targets[:, t] = tokens[:, (t - shift) % L]
    return tokens.to(device), targets.to(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_toy(
    model: ToyTransformer,
    shift: int,
    steps: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    params: Iterable[nn.Parameter] | None = None,
) -> list[float]:
    """Train ``model`` on the task ``shift`` with AdamW; returns the loss of every step.

    ``params`` defaults to every parameter that requires grad, so the same loop trains a whole
    model or only its LoRA factors after ``inject_lora`` froze the rest. Batches come from a
    generator seeded with ``seed``, so a run is reproducible.
    """
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    if not params:
        raise ValueError("train_toy: nothing to train (no parameter requires grad)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    device = _device(model)
    model.train()
    losses = []
    for _ in range(steps):
        tokens, targets = toy_batch(batch_size, model.seq_len, model.vocab_size, shift, generator, device)
        loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())  # (B*L, V) vs (B*L,)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def toy_accuracy(model: ToyTransformer, shift: int, batch_size: int = 512, seed: int = 1234) -> float:
    """Fraction of tokens predicted right on a fixed held-out batch of the task ``shift`` (eval mode)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    tokens, targets = toy_batch(batch_size, model.seq_len, model.vocab_size, shift, generator, _device(model))
    accuracy = (model(tokens).argmax(-1) == targets).float().mean().item()
    model.train(was_training)
    return accuracy
