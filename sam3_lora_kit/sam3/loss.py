"""The official SAM 3 training losses, wired up for one process on any device.

``build_loss`` assembles ``sam3.train.loss.sam3_loss.Sam3LossWrapper`` exactly as the official
Roboflow fine-tuning recipe does (``roboflow_v100_full_ft_100_images.yaml``, its segmentation
variant): the one-to-one Hungarian matcher, the one-to-many matcher for the DAC queries,
classification focal loss with presence, box L1 + GIoU, and mask focal + dice. Only two
things differ, both for running outside a multi-GPU job: ``normalization="local"`` (the default
"global" all-reduces) and, off CUDA, the focal loss's pure-torch branch instead of Triton.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from sam3_lora_kit.lora.storage import saving_stored_weights
from sam3_lora_kit.sam3 import compat

__all__ = ["LOSS_WEIGHTS", "build_loss", "training_step_loss"]

# The official recipe's weights (roboflow_v100_full_ft_100_images.yaml).
LOSS_WEIGHTS: dict[str, float] = {
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_ce": 20.0,
    "presence_loss": 20.0,
    "loss_mask": 200.0,
    "loss_dice": 10.0,
}


def build_loss(device: str | torch.device | None = None) -> nn.Module:
    """``Sam3LossWrapper`` with sam3's own matchers and loss classes, mask losses on.

    On a device other than CUDA the returned module computes every focal loss with
    ``sam3``'s pure-torch branch (``compat.torch_focal_loss``) around each call.
    """
    from sam3.train.loss.loss_fns import Boxes, IABCEMdetr, Masks
    from sam3.train.loss.sam3_loss import Sam3LossWrapper
    from sam3.train.matcher import BinaryHungarianMatcherV2, BinaryOneToManyMatcher

    class Sam3Loss(Sam3LossWrapper):
        """``Sam3LossWrapper`` that uses the Triton focal loss only on CUDA."""

        use_triton = torch.device(device or "cpu").type == "cuda"

        def forward(self, find_stages: Any, find_targets: Any) -> dict[str, torch.Tensor]:
            scope = contextlib.nullcontext() if self.use_triton else compat.torch_focal_loss()
            with scope:
                return super().forward(find_stages, find_targets)

    w = LOSS_WEIGHTS
    return Sam3Loss(
        matcher=BinaryHungarianMatcherV2(focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2, stable=False),
        o2m_matcher=BinaryOneToManyMatcher(alpha=0.3, threshold=0.4, topk=4),
        o2m_weight=2.0,
        use_o2m_matcher_on_o2m_aux=False,
        loss_fns_find=[
            Boxes(weight_dict={"loss_bbox": w["loss_bbox"], "loss_giou": w["loss_giou"]}),
            IABCEMdetr(
                weak_loss=False, weight_dict={"loss_ce": w["loss_ce"], "presence_loss": w["presence_loss"]},
                pos_weight=10.0, alpha=0.25, gamma=2, use_presence=True, pos_focal=False,
                pad_n_queries=200, pad_scale_pos=1.0,
            ),
            Masks(focal_alpha=0.25, focal_gamma=2.0, weight_dict={"loss_mask": w["loss_mask"], "loss_dice": w["loss_dice"]}, compute_aux=False),
        ],
        loss_fn_semantic_seg=None,
        normalization="local",  # "global" all-reduces and needs a process group
        scale_by_find_batch_size=True,
    )


def training_step_loss(model: nn.Module, batch: Any, loss_fn: nn.Module) -> dict[str, torch.Tensor]:
    """The official trainer's step: forward, targets via ``back_convert``, loss; ``"core_loss"`` plus each term.

    ``model`` must be in train mode (it runs the matcher inside its forward); a DDP-wrapped model
    works too. ``batch`` must already be on the model's device.
    """
    core = model.module if hasattr(model, "module") else model
    with saving_stored_weights(core):  # frozen weights kept in bf16 stay so in the autograd graph
        find_stages = model(batch)
    find_targets = [core.back_convert(target) for target in batch.find_targets]
    return loss_fn(find_stages, find_targets)
