"""Eval outputs of ``Sam3Image`` -> per-query masks, boxes and scores in the original image's pixels.

As ``sam3.eval.postprocessors.PostProcessImage``: score = sigmoid(logit) x sigmoid(presence),
boxes from normalised ``xyxy`` scaled to the original size, masks bilinearly resized to the
original size and thresholded at probability 0.5. It assumes the evaluation geometry of
``BatchBuilder`` (square resize, no padding: ``min_scale=1``), the official one.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["final_outputs", "postprocess"]


def final_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """The last step's output dict of a ``SAM3Output`` (or ``outputs`` itself if it is a dict)."""
    if isinstance(outputs, dict):
        return outputs
    return outputs[-1]  # SAM3Output in LAST_STEP_PER_STAGE mode: the last stage's last step


@torch.no_grad()
def postprocess(
    outputs: Any,
    batch: Any,
    max_detections: int | None = 100,
    score_threshold: float = 0.0,
) -> list[dict[str, Any]]:
    """One dict per query of ``batch``: ``masks (P, H, W) bool``, ``boxes (P, 4)`` xyxy pixels, ``scores (P,)``,
    ``image_id``, ``category_id``, sorted by score; P <= ``max_detections`` predictions above
    ``score_threshold``. ``H, W`` is the query's original image size.
    """
    out = final_outputs(outputs)
    logits = out["pred_logits"].float().squeeze(-1)  # (Q, M)
    scores = logits.sigmoid()
    if out.get("presence_logit_dec") is not None:
        scores = scores * out["presence_logit_dec"].float().sigmoid().view(-1, 1)  # (Q, 1)
    boxes_norm = out["pred_boxes_xyxy"].float()  # (Q, M, 4) in [0, 1]
    mask_logits = out.get("pred_masks")  # (Q, M, h, w) or None
    meta = batch.find_metadatas[0]
    results = []
    for q in range(scores.shape[0]):
        height, width = (int(v) for v in meta.original_size[q])
        order = scores[q].argsort(descending=True)
        order = order[scores[q][order] > score_threshold]
        if max_detections is not None:
            order = order[:max_detections]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32, device=boxes_norm.device)
        boxes = (boxes_norm[q, order] * scale).clamp(min=0)  # (P, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(max=width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(max=height)
        if mask_logits is not None and len(order):
            masks = F.interpolate(mask_logits[q, order][None].float(), size=(height, width), mode="bilinear", align_corners=False)[0] > 0
        else:
            masks = torch.zeros(len(order), height, width, dtype=torch.bool, device=scores.device)
        results.append(
            {
                "image_id": int(meta.original_image_id[q]),
                "category_id": int(meta.original_category_id[q]),
                "scores": scores[q, order].cpu(),  # (P,)
                "boxes": boxes.cpu(),  # (P, 4) xyxy pixels
                "masks": masks.cpu(),  # (P, H, W) bool
            }
        )
    return results
