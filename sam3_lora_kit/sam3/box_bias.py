"""SAM 3's box-relative attention bias, passed between decoder layers in factored form.

``sam3``'s ``TransformerDecoder`` gives every layer's image cross-attention a bias that depends on
each query's box (``boxRPB``): ``bias[b, n, q, h * W + w] = dy[b, q, h, n] + dx[b, q, w, n]``, a sum
of a row term and a column term. ``sam3`` materialises it as ``(batch * heads, queries, H * W)``
before each layer and hands it to the layer, which runs under activation checkpointing; torch's
checkpoint keeps a region's inputs until backward, so all six biases stay alive through the
step: ``(24, 400, 5184)`` float32, 1.19 GB at 1008 px, the largest single block of a LoRA step's
activations (``python -m benchmarks --only activations``).

``use_factored_box_bias(model)`` swaps the decoder and its layers to subclasses (same weights,
same state dict, same outputs): the decoder's ``_get_rpb_matrix`` returns the two terms side by
side, ``(batch, heads, queries, H + W)``, and each layer adds them up inside its checkpointed
region, so the full bias exists only while that layer runs (forward, and again in its
recompute). The bias values are bit-identical; gradients agree to float rounding.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch
from torch import nn

__all__ = ["expand_box_bias", "use_factored_box_bias"]


def expand_box_bias(factored: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(..., H + W)`` row and column terms -> ``(..., H * W)`` bias, ``bias[..., h * W + w] = rows[h] + cols[w]``."""
    if factored.shape[-1] != height + width:
        raise ValueError(f"factored box bias has {factored.shape[-1]} columns; expected H + W = {height} + {width}")
    rows, cols = factored[..., :height], factored[..., height:]
    return (rows.unsqueeze(-1) + cols.unsqueeze(-2)).flatten(-2)  # (..., H, W) -> (..., H * W)


def _factored_rpb(decoder: nn.Module, reference_boxes: torch.Tensor, feat_size) -> torch.Tensor:
    """``TransformerDecoder._get_rpb_matrix`` (sam3 0.1.4, decoder.py:331) up to the sum: ``(bs, heads, nq, H + W)``."""
    from sam3.model.act_ckpt_utils import activation_ckpt_wrapper
    from sam3.model.box_ops import box_cxcywh_to_xyxy

    height, width = feat_size
    boxes_xyxy = box_cxcywh_to_xyxy(reference_boxes).transpose(0, 1)  # (bs, nq, 4)
    bs, num_queries, _ = boxes_xyxy.shape
    coords_h, coords_w = decoder._get_coords(height, width, reference_boxes.device)  # (H,), (W,)
    deltas_y = coords_h.view(1, -1, 1) - boxes_xyxy.reshape(-1, 1, 4)[:, :, 1:4:2]
    deltas_y = deltas_y.view(bs, num_queries, -1, 2)  # (bs, nq, H, 2)
    deltas_x = coords_w.view(1, -1, 1) - boxes_xyxy.reshape(-1, 1, 4)[:, :, 0:3:2]
    deltas_x = deltas_x.view(bs, num_queries, -1, 2)  # (bs, nq, W, 2)
    if decoder.boxRPB in ("log", "both"):
        deltas_x_log = deltas_x * 8  # normalize to -8, 8
        deltas_x_log = torch.sign(deltas_x_log) * torch.log2(torch.abs(deltas_x_log) + 1.0) / math.log2(8)
        deltas_y_log = deltas_y * 8
        deltas_y_log = torch.sign(deltas_y_log) * torch.log2(torch.abs(deltas_y_log) + 1.0) / math.log2(8)
        if decoder.boxRPB == "log":
            deltas_x, deltas_y = deltas_x_log, deltas_y_log
        else:
            deltas_x = torch.cat([deltas_x, deltas_x_log], dim=-1)
            deltas_y = torch.cat([deltas_y, deltas_y_log], dim=-1)
    if decoder.training:
        assert decoder.use_act_checkpoint, "activation ckpt not enabled in decoder"
    checkpointed = decoder.training and decoder.use_act_checkpoint
    deltas_x = activation_ckpt_wrapper(decoder.boxRPB_embed_x)(x=deltas_x, act_ckpt_enable=checkpointed)  # (bs, nq, W, heads)
    deltas_y = activation_ckpt_wrapper(decoder.boxRPB_embed_y)(x=deltas_y, act_ckpt_enable=checkpointed)  # (bs, nq, H, heads)
    return torch.cat([deltas_y, deltas_x], dim=2).permute(0, 3, 1, 2).contiguous()  # (bs, heads, nq, H + W)


def _classes() -> tuple[type, type]:
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer

    class FactoredBoxBiasDecoder(TransformerDecoder):
        """``TransformerDecoder`` whose box bias travels to each layer as its row and column terms."""

        def _get_rpb_matrix(self, reference_boxes, feat_size):  # (bs, heads, nq, H + W)
            return _factored_rpb(self, reference_boxes, feat_size)

    signature = inspect.signature(TransformerDecoderLayer.forward)

    class FactoredBoxBiasDecoderLayer(TransformerDecoderLayer):
        """``TransformerDecoderLayer`` that expands a factored ``cross_attn_mask`` (``(bs * heads, nq, H + W)``)."""

        def forward(self, *args: Any, **kwargs: Any):
            bound = signature.bind(self, *args, **kwargs)
            factored = bound.arguments.get("cross_attn_mask")
            if factored is not None:
                shapes = bound.arguments.get("memory_spatial_shapes")
                if shapes is None:
                    raise ValueError("a factored box bias needs memory_spatial_shapes to expand it")
                height, width = (int(n) for n in shapes[0])
                bound.arguments["cross_attn_mask"] = expand_box_bias(factored, height, width)  # (bs * heads, nq, H * W)
            return TransformerDecoderLayer.forward(*bound.args, **bound.kwargs)

    # sam3's checkpoint wrapper reads the forward's parameter names to pass keyword arguments positionally.
    FactoredBoxBiasDecoderLayer.forward.__signature__ = signature
    for cls in (FactoredBoxBiasDecoder, FactoredBoxBiasDecoderLayer):
        cls.__module__ = __name__  # picklable: found again through this module's __getattr__
        cls.__qualname__ = cls.__name__
    return FactoredBoxBiasDecoder, FactoredBoxBiasDecoderLayer


@functools.lru_cache(maxsize=1)
def _cached_classes() -> tuple[type, type]:
    return _classes()


def __getattr__(name: str) -> Any:  # the classes without importing sam3 at import time
    names = ("FactoredBoxBiasDecoder", "FactoredBoxBiasDecoderLayer")
    if name not in names:  # e.g. ``__path__``, probed by ``from ... import``: must not import sam3
        raise AttributeError(name)
    return _cached_classes()[names.index(name)]


def use_factored_box_bias(model: nn.Module) -> int:
    """Swap every ``TransformerDecoder`` with a box bias (and its layers) in ``model`` in place; returns how many decoders.

    Only exact ``sam3`` classes are swapped; parameters, buffers and the state dict stay as they are.
    """
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer

    decoder_class, layer_class = _cached_classes()
    swapped = 0
    for module in model.modules():
        if type(module) is TransformerDecoder and getattr(module, "boxRPB", "none") != "none":
            if not all(type(layer) is TransformerDecoderLayer for layer in module.layers):
                continue  # a layer type that would not expand the factored bias: leave this decoder as built
            for layer in module.layers:
                layer.__class__ = layer_class
            module.__class__ = decoder_class
            swapped += 1
    return swapped
