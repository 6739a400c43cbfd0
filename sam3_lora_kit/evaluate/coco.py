"""COCO metrics for prompted segmentation: ground truth, results, mAP and prompt discrimination.

Everything here works on plain data, so it is tested without a model:

- ``coco_ground_truth(samples, category_names)``: a COCO ground-truth dict built from dataset
  items (``CocoSegmentationDataset`` items), in the frame the items are in (resized or not);
- ``predictions_to_coco_results(predictions)``: ``postprocess`` output (one dict per query:
  ``masks (Q, H, W)``, ``boxes (Q, 4)`` xyxy pixels, ``scores (Q,)``, ``image_id``,
  ``category_id``) -> COCO result dicts with RLE masks (``pycocotools.mask``) and xywh boxes;
- ``coco_map(ground_truth, results, iou_type)``: pycocotools' ``COCOeval``, overall and per class;
- ``prompt_discrimination(predictions, present, score_threshold)``: how often a prompt naming a
  class absent from the image returns nothing above the threshold;
- ``before_after_fields(before, after)``: the run-summary fields comparing two evaluations.
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

# The twelve numbers COCOeval.summarize() prints, in order.
COCO_STAT_NAMES = (
    "mAP", "mAP_50", "mAP_75", "mAP_small", "mAP_medium", "mAP_large",
    "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large",
)


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def encode_mask(mask: Any) -> dict:
    """RLE (COCO ``counts`` as str) of one ``(H, W)`` boolean mask."""
    from pycocotools import mask as mask_utils

    array = np.asfortranarray(_numpy(mask).astype(np.uint8))  # (H, W)
    rle = mask_utils.encode(array)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def xyxy_to_xywh(boxes: Any) -> np.ndarray:
    """``(N, 4)`` xyxy -> ``(N, 4)`` xywh (COCO's box format)."""
    b = _numpy(boxes).astype(np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def coco_ground_truth(samples: Iterable[Mapping], category_names: Sequence[str]) -> dict:
    """A COCO ground-truth dict from dataset items (``image``, ``image_id``, ``masks``, ``boxes``,
    ``category_ids``); categories are ``1..K`` named by ``category_names``."""
    images, annotations = [], []
    for sample in samples:
        height, width = (int(s) for s in sample["image"].shape[-2:])
        image_id = int(sample["image_id"])
        images.append({"id": image_id, "height": height, "width": width, "file_name": str(sample.get("file_name", image_id))})
        masks = _numpy(sample["masks"]).astype(bool)  # (N, H, W)
        boxes = xyxy_to_xywh(sample["boxes"])  # (N, 4)
        for mask, box, category_id in zip(masks, boxes, _numpy(sample["category_ids"]).tolist()):
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(category_id),
                "segmentation": encode_mask(mask),
                "area": float(mask.sum()),
                "bbox": [float(v) for v in box],
                "iscrowd": 0,
            })
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(category_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def predictions_to_coco_results(predictions: Iterable[Mapping], max_detections: int = 100, min_score: float = 0.0) -> list[dict]:
    """COCO result dicts (``segmentation`` RLE, ``bbox`` xywh, ``score``) from ``postprocess``
    output, keeping per query the ``max_detections`` best scores at or above ``min_score``."""
    results = []
    for prediction in predictions:
        scores = _numpy(prediction["scores"]).astype(np.float64).reshape(-1)  # (Q,)
        if scores.size == 0:
            continue
        keep = np.argsort(-scores, kind="stable")[:max_detections]
        keep = keep[scores[keep] >= min_score]
        masks = prediction["masks"]  # (Q, H, W)
        boxes = xyxy_to_xywh(prediction["boxes"])  # (Q, 4)
        for q in keep.tolist():
            results.append({
                "image_id": int(prediction["image_id"]),
                "category_id": int(prediction["category_id"]),
                "segmentation": encode_mask(masks[q]),
                "bbox": [float(v) for v in boxes[q]],
                "score": float(scores[q]),
            })
    return results


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _load_results(ground_truth, results: list[dict], iou_type: str):
    """``COCO.loadRes`` without its crash on an empty list (no detections scores 0, not an error)."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return ground_truth.loadRes(copy.deepcopy(results))
    return _coco({"images": ground_truth.dataset["images"], "categories": ground_truth.dataset["categories"], "annotations": []})


def coco_map(ground_truth: dict, results: list[dict], iou_type: str = "segm") -> dict:
    """COCO mAP for ``iou_type`` (``"segm"`` or ``"bbox"``): ``{"mAP", "mAP_50", ..., "per_class":
    {name: AP}}``. A class without ground truth gets ``None``; no ground truth at all raises."""
    from pycocotools.cocoeval import COCOeval

    if iou_type not in {"segm", "bbox"}:
        raise ValueError(f"iou_type must be 'segm' or 'bbox', not {iou_type!r}")
    if not ground_truth["annotations"]:
        raise ValueError("no ground-truth objects to evaluate against (empty split?)")
    gt = _coco(ground_truth)
    if iou_type == "segm":  # loadRes takes a result's area from its box when it has one; a mask's own area sorts it by size
        results = [{k: v for k, v in r.items() if k != "bbox"} if "segmentation" in r else r for r in results]
    dt = _load_results(gt, results, iou_type)
    evaluator = COCOeval(gt, dt, iouType=iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
    # precision: (T iou thresholds, R recall points, K classes, A areas, M max-dets); area "all", 100 dets.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        name = gt.cats[category_id]["name"]
        per_class[name] = float(values.mean()) if values.size else None
    # COCOeval reports -1 where a statistic has no ground truth (e.g. no small objects).
    stats = {name: (None if value < 0 else value) for name, value in stats.items()}
    stats["per_class"] = per_class
    return stats


def prompt_discrimination(predictions: Iterable[Mapping], present: Mapping[int, set[int]], score_threshold: float = 0.5) -> dict:
    """How well prompts tell present classes from absent ones, per query (image x prompt).

    ``present`` maps ``image_id`` to the category ids with ground truth in that image. An
    absent prompt is *rejected* when no score reaches ``score_threshold``; a present prompt is
    *detected* when one does. Returns ``{"rate": rejected / absent, "absent_queries", "rejected",
    "present_queries", "detected", "detected_rate", "score_threshold"}`` (rates ``None`` when
    there is nothing to count)."""
    absent = rejected = present_count = detected = 0
    for prediction in predictions:
        scores = _numpy(prediction["scores"]).reshape(-1)
        fires = bool(scores.size and float(scores.max()) >= score_threshold)
        if int(prediction["category_id"]) in present.get(int(prediction["image_id"]), set()):
            present_count += 1
            detected += fires
        else:
            absent += 1
            rejected += not fires
    return {
        "rate": rejected / absent if absent else None,
        "absent_queries": absent,
        "rejected": rejected,
        "present_queries": present_count,
        "detected": detected,
        "detected_rate": detected / present_count if present_count else None,
        "score_threshold": score_threshold,
    }


def format_metrics(metrics: Mapping, title: str = "") -> str:
    """A small text table of ``evaluate_coco``'s result: overall and per-class AP for segm and bbox."""
    lines = [title] if title else []
    segm, bbox = metrics.get("segm", {}), metrics.get("bbox", {})
    fmt = lambda v: "   -  " if v is None else f"{v:6.3f}"  # noqa: E731
    lines.append(f"{'':24s} {'segm':>6s} {'bbox':>6s}")
    for key in ("mAP", "mAP_50", "mAP_75"):
        lines.append(f"{key:24s} {fmt(segm.get(key))} {fmt(bbox.get(key))}")
    for name in segm.get("per_class", {}):
        lines.append(f"  AP {name[:20]:20s} {fmt(segm['per_class'].get(name))} {fmt(bbox.get('per_class', {}).get(name))}")
    disc = metrics.get("prompt_discrimination")
    if disc and disc.get("rate") is not None:
        lines.append(f"prompt discrimination: {disc['rejected']}/{disc['absent_queries']} absent prompts returned nothing "
                     f"above {disc['score_threshold']:.2f} ({disc['rate']:.0%})")
    if disc and disc.get("detected_rate") is not None:  # the other half: a model that finds nothing rejects every absent prompt
        lines.append(f"present prompts detected: {disc['detected']}/{disc['present_queries']} ({disc['detected_rate']:.0%})")
    return "\n".join(lines)


def before_after_fields(before: Mapping, after: Mapping) -> dict[str, Any]:
    """The run-summary fields that compare two ``evaluate_coco`` results of one model, before and after training.

    ``map_*`` is segm mAP, ``bbox_map_*`` bbox mAP, ``map_per_class_*`` segm AP per class name,
    ``prompt_discrimination_*`` the share of absent prompts rejected and ``prompt_detection_*``
    the share of present prompts detected (``sam3-lora ledger`` reads ``map_before``/``map_after``).
    """
    fields: dict[str, Any] = {}
    for when, metrics in (("before", before), ("after", after)):
        discrimination = metrics.get("prompt_discrimination") or {}
        fields.update({
            f"map_{when}": metrics.get("segm_mAP"),
            f"bbox_map_{when}": metrics.get("bbox_mAP"),
            f"map_per_class_{when}": metrics.get("segm", {}).get("per_class"),
            f"prompt_discrimination_{when}": discrimination.get("rate"),
            f"prompt_detection_{when}": discrimination.get("detected_rate"),
        })
    return fields
