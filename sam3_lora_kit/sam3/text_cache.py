"""Text features computed once: SAM 3's frozen text encoder out of the training step.

Every LoRA preset freezes the text encoder (``backbone.language_backbone``, 354 M of the full
model's 840 M parameters), and a training run only ever asks it for the dataset's category
names. Its output for those phrases is therefore the same at every step. ``cache_text_features``
encodes them once and puts a ``CachedTextEncoder`` in the encoder's place, which answers with the
stored features (the same tensors the encoder returns, row for row). The encoder taken out is
returned: drop it to free its memory (0.66 GiB in bfloat16 for the full model), or keep it and
put it back with ``restore_text_encoder``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sam3_lora_kit.lora import iter_lora_layers

__all__ = ["CachedTextEncoder", "cache_text_features", "frozen_text_encoder", "restore_text_encoder"]


class CachedTextEncoder(nn.Module):
    """Stands in for ``VETextEncoder``: the features of a fixed list of phrases, looked up by text.

    ``forward(text, input_boxes, device)`` returns what ``VETextEncoder`` returns for ``text``:
    the padding mask (B, L) bool (True at padding), the resized memory (L, B, d_model) and the
    token embeddings (L, B, width). Asking for a phrase that was not cached raises ``KeyError``.
    """

    def __init__(self, phrases: Sequence[str], padding_mask: torch.Tensor, memory: torch.Tensor,
                 embeds: torch.Tensor) -> None:
        super().__init__()
        if len(set(phrases)) != len(phrases):
            raise ValueError("phrases must be distinct")
        self.index = {phrase: row for row, phrase in enumerate(phrases)}
        self.register_buffer("padding_mask", padding_mask, persistent=False)  # (K, L) bool
        self.register_buffer("memory", memory, persistent=False)  # (L, K, d_model)
        self.register_buffer("embeds", embeds, persistent=False)  # (L, K, width)

    @property
    def phrases(self) -> list[str]:
        """The cached phrases, in row order."""
        return list(self.index)

    def forward(self, text: Sequence[str], input_boxes: Sequence | None = None,
                device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if input_boxes is not None and len(input_boxes) > 0:
            raise ValueError("CachedTextEncoder holds text features only; input_boxes are not supported")
        missing = [phrase for phrase in text if phrase not in self.index]
        if missing:
            raise KeyError(f"text {missing[0]!r} was not among the {len(self.index)} phrases encoded when the text "
                           f"features were cached ({', '.join(map(repr, self.index))}); the frozen text encoder "
                           f"was taken out of the model to save memory (train with text_cache: false to keep it)")
        rows = torch.tensor([self.index[phrase] for phrase in text], device=self.memory.device)
        return self.padding_mask[rows], self.memory[:, rows], self.embeds[:, rows]

    def extra_repr(self) -> str:
        return f"phrases={len(self.index)}, memory={tuple(self.memory.shape)}"


def frozen_text_encoder(model: nn.Module) -> nn.Module | None:
    """``model.backbone.language_backbone`` when nothing in it trains (no parameter that needs a
    gradient, no LoRA layer); None otherwise, or when the model has no such module."""
    encoder = getattr(getattr(model, "backbone", None), "language_backbone", None)
    if encoder is None or isinstance(encoder, CachedTextEncoder):
        return None
    if any(p.requires_grad for p in encoder.parameters()) or any(True for _ in iter_lora_layers(encoder)):
        return None
    return encoder


@torch.no_grad()
def _encode(encoder: nn.Module, phrases: list[str], device: torch.device,
            autocast_dtype: torch.dtype | None) -> CachedTextEncoder:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sam3_lora_kit.runtime import autocast_context
    from sam3_lora_kit.sam3.build import TEXT_ENCODER_SDPA_BACKENDS

    # the kernels sam3's SAM3VLBackbone.forward_text runs the encoder with
    with sdpa_kernel([getattr(SDPBackend, name) for name in TEXT_ENCODER_SDPA_BACKENDS]), \
            autocast_context(device, autocast_dtype):
        padding_mask, memory, embeds = encoder(phrases, None, device=device)
    return CachedTextEncoder(phrases, padding_mask, memory, embeds)


def cache_text_features(model: nn.Module, phrases: Sequence[str], device: torch.device | str | None = None,
                        autocast_dtype: torch.dtype | None = None) -> nn.Module | None:
    """Encode ``phrases`` once and put their features in place of the model's frozen text encoder.

    Returns the encoder taken out (drop it to free its memory; ``restore_text_encoder`` puts it
    back), or None, changing nothing, when the model has no frozen text encoder (part of it
    trains). ``device``: where the features are computed and kept (default: the encoder's);
    ``autocast_dtype``: the autocast the training step runs under, so the features are the ones
    it would compute (None: full precision).
    """
    encoder = frozen_text_encoder(model)
    if encoder is None:
        return None
    unique = list(dict.fromkeys(phrases))
    if not unique:
        raise ValueError("no phrases to cache")
    if device is None:
        device = next(encoder.parameters()).device
    model.backbone.language_backbone = _encode(encoder, unique, torch.device(device), autocast_dtype)
    return encoder


def restore_text_encoder(model: nn.Module, encoder: nn.Module) -> None:
    """Put back the text encoder that ``cache_text_features`` took out."""
    if not isinstance(model.backbone.language_backbone, CachedTextEncoder):
        raise ValueError("the model's text encoder is not a CachedTextEncoder: nothing to restore")
    model.backbone.language_backbone = encoder
