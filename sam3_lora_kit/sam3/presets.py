"""LoRA target presets for SAM 3, over the real module names of ``Sam3Image``.

Where attention lives in ``sam3`` (``full`` and ``tiny`` share these names):

* ViT (``backbone.vision_backbone.trunk.blocks.N.attn``): a fused ``nn.Linear`` ``qkv``
  (``E -> 3E``) and ``proj``, run by ``F.scaled_dot_product_attention``; MLP ``mlp.fc1/fc2``.
* Detector: ``nn.MultiheadAttention`` (or sam3's subclass ``MultiheadAttentionWrapper``) in the
  fusion encoder (``transformer.encoder.layers.N.self_attn/cross_attn_image``), the decoder
  (``transformer.decoder.layers.N.self_attn/cross_attn/ca_text``), the geometry encoder
  (``geometry_encoder.encode.N.self_attn/cross_attn_image``) and the segmentation head
  (``segmentation_head.cross_attend_prompt``). Their packed ``in_proj_weight`` is read as a raw
  tensor, so only ``LoRAMultiheadAttention`` can adapt them (not a wrapper on ``out_proj``).
* Text encoder (``backbone.language_backbone``): frozen by every preset.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from sam3_lora_kit.lora import LoRAReport, inject_lora

__all__ = ["DEFAULT_PRESET", "LORA_PRESETS", "apply_lora", "resolve_targets"]

_VIT = r"backbone\.vision_backbone\.trunk\.blocks\.\d+"
_VIT_ATTN = _VIT + r"\.attn\.(qkv|proj)"
_VIT_MLP = _VIT + r"\.mlp\.(fc1|fc2)"
_DETECTOR_ATTN = (
    r"transformer\.encoder\.layers\.\d+\.(self_attn|cross_attn_image)",
    r"transformer\.decoder\.layers\.\d+\.(self_attn|cross_attn|ca_text)",
    r"geometry_encoder\.encode\.\d+\.(self_attn|cross_attn_image)",
    r"segmentation_head\.cross_attend_prompt",
)

LORA_PRESETS: dict[str, tuple[str, ...]] = {
    "vision-attn": (_VIT_ATTN,),  # ViT qkv + proj
    "vision-all": (_VIT_ATTN, _VIT_MLP),  # ViT qkv + proj + MLP
    "detector-attn": _DETECTOR_ATTN,  # every attention after the backbones
    "all-attn": (_VIT_ATTN, *_DETECTOR_ATTN),  # ViT attention + detector attention
}
DEFAULT_PRESET = "all-attn"

_QKV = _VIT + r"\.attn\.qkv"


def resolve_targets(preset: str | None, target_modules: str | Sequence[str] | None = None) -> list[str]:
    """The target patterns for ``preset`` plus ``target_modules`` (either may be None, not both)."""
    targets: list[str] = []
    if preset is not None:
        if preset not in LORA_PRESETS:
            raise ValueError(f"unknown LoRA preset {preset!r}; choose one of {', '.join(LORA_PRESETS)}")
        targets += LORA_PRESETS[preset]
    if target_modules is not None:
        targets += [target_modules] if isinstance(target_modules, str) else list(target_modules)
    if not targets:
        raise ValueError("no LoRA targets: give a preset or target_modules")
    return targets


def apply_lora(
    model: nn.Module,
    preset: str | None = DEFAULT_PRESET,
    rank: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] | None = None,
    qkv: str = "fused",
    trainable_modules: Sequence[str] = (),
) -> LoRAReport:
    """Freeze ``model`` and add LoRA to the preset's modules (and ``target_modules``); returns the report.

    ``qkv="fused"`` adapts each ViT ``qkv`` as one ``E -> 3E`` matrix (one A, one B);
    ``qkv="split"`` gives q, k and v their own A and B (``LoRALinear(out_splits=(E, E, E))``).
    ``print(report)`` shows the trainable-parameter table.
    """
    if qkv not in ("fused", "split"):
        raise ValueError(f"qkv must be 'fused' or 'split', got {qkv!r}")
    targets = resolve_targets(preset, target_modules)
    layer_options = None
    if qkv == "split":
        embed_dim = model.backbone.vision_backbone.trunk.blocks[0].attn.qkv.in_features
        layer_options = {_QKV: {"out_splits": (embed_dim,) * 3}}
    return inject_lora(model, targets, rank, alpha, dropout, trainable_modules=trainable_modules, layer_options=layer_options)
