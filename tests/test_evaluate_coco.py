"""COCO conversion and metrics on fabricated ground truth and ``postprocess``-shaped predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam3_lora_kit.evaluate.coco import (
    coco_ground_truth,
    coco_map,
    encode_mask,
    format_metrics,
    predictions_to_coco_results,
    prompt_discrimination,
)

NAMES = ["cat", "dog", "bird"]
H, W = 32, 40


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _sample(image_id: int, objects: list[tuple[int, tuple[int, int, int, int]]]) -> dict:
    """A dataset item with rectangular objects ``(category_id, (x0, y0, x1, y1))``."""
    masks = torch.stack([_box_mask(*box) for _, box in objects]) if objects else torch.zeros(0, H, W, dtype=torch.bool)
    boxes = torch.tensor([box for _, box in objects], dtype=torch.float32).reshape(-1, 4)
    return {
        "image": torch.zeros(3, H, W, dtype=torch.uint8),
        "image_id": image_id,
        "file_name": f"{image_id}.jpg",
        "masks": masks,
        "boxes": boxes,
        "category_ids": torch.tensor([c for c, _ in objects], dtype=torch.int64),
        "category_names": [NAMES[c - 1] for c, _ in objects],
    }


SAMPLES = [
    _sample(1, [(1, (2, 2, 12, 10)), (2, (20, 5, 35, 25))]),
    _sample(2, [(1, (5, 5, 15, 15)), (1, (18, 18, 30, 30)), (3, (30, 2, 38, 8))]),
    _sample(3, [(2, (0, 0, 40, 32))]),
]


def _perfect_predictions(samples, extra_empty_queries: bool = True) -> list[dict]:
    """One query per (image, category), as ``postprocess`` returns them, holding exactly the GT."""
    predictions = []
    for sample in samples:
        for category_id in range(1, len(NAMES) + 1):
            keep = sample["category_ids"] == category_id
            n = int(keep.sum())
            predictions.append({
                "image_id": sample["image_id"],
                "category_id": category_id,
                "masks": sample["masks"][keep],  # (Q, H, W)
                "boxes": sample["boxes"][keep],  # (Q, 4)
                "scores": torch.linspace(0.99, 0.9, n) if n else torch.zeros(0),
            })
    return predictions


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_perfect_predictions_score_map_one(iou_type):
    gt = coco_ground_truth(SAMPLES, NAMES)
    results = predictions_to_coco_results(_perfect_predictions(SAMPLES))
    metrics = coco_map(gt, results, iou_type)
    assert metrics["mAP"] == pytest.approx(1.0)
    assert metrics["mAP_50"] == pytest.approx(1.0)
    assert metrics["per_class"] == {name: pytest.approx(1.0) for name in NAMES}


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_no_predictions_score_zero(iou_type):
    gt = coco_ground_truth(SAMPLES, NAMES)
    metrics = coco_map(gt, [], iou_type)
    assert metrics["mAP"] == 0.0
    assert metrics["per_class"] == {name: 0.0 for name in NAMES}


def test_predictions_with_all_queries_empty_score_zero():
    empty = [dict(p, masks=p["masks"][:0], boxes=p["boxes"][:0], scores=p["scores"][:0]) for p in _perfect_predictions(SAMPLES)]
    assert predictions_to_coco_results(empty) == []
    assert coco_map(coco_ground_truth(SAMPLES, NAMES), [], "segm")["mAP"] == 0.0


def test_wrong_class_scores_zero_for_that_class():
    predictions = _perfect_predictions(SAMPLES)
    for p in predictions:  # call every dog a bird and every bird a dog
        p["category_id"] = {1: 1, 2: 3, 3: 2}[p["category_id"]]
    metrics = coco_map(coco_ground_truth(SAMPLES, NAMES), predictions_to_coco_results(predictions), "segm")
    assert metrics["per_class"]["cat"] == pytest.approx(1.0)
    assert metrics["per_class"]["dog"] == 0.0 and metrics["per_class"]["bird"] == 0.0
    assert metrics["mAP"] == pytest.approx(1 / 3)


def test_class_without_ground_truth_is_none_not_zero():
    samples = [_sample(1, [(1, (2, 2, 12, 10))])]
    metrics = coco_map(coco_ground_truth(samples, NAMES), predictions_to_coco_results(_perfect_predictions(samples)), "segm")
    assert metrics["per_class"] == {"cat": pytest.approx(1.0), "dog": None, "bird": None}


def test_no_ground_truth_at_all_is_an_error():
    with pytest.raises(ValueError, match="no ground-truth"):
        coco_map(coco_ground_truth([_sample(1, [])], NAMES), [], "segm")


def test_results_keep_the_best_scores_and_convert_boxes_to_xywh():
    masks = torch.stack([_box_mask(0, 0, 4, 4)] * 3)
    prediction = {"image_id": 7, "category_id": 2, "masks": masks,
                  "boxes": torch.tensor([[1.0, 2.0, 5.0, 10.0]] * 3), "scores": torch.tensor([0.1, 0.8, 0.5])}
    results = predictions_to_coco_results([prediction], max_detections=2)
    assert [r["score"] for r in results] == pytest.approx([0.8, 0.5])
    assert results[0]["bbox"] == [1.0, 2.0, 4.0, 8.0]
    assert results[0]["image_id"] == 7 and results[0]["category_id"] == 2
    assert predictions_to_coco_results([prediction], min_score=0.6)[0]["score"] == pytest.approx(0.8)


def test_rle_round_trips():
    from pycocotools import mask as mask_utils

    mask = _box_mask(3, 4, 17, 20)
    rle = encode_mask(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
    decoded = mask_utils.decode(dict(rle, counts=rle["counts"].encode()))
    assert np.array_equal(decoded.astype(bool), mask.numpy())


def test_lower_score_on_a_false_positive_keeps_map_one():
    predictions = _perfect_predictions(SAMPLES)
    for p in predictions:  # add a low-scored junk detection to every query
        p["masks"] = torch.cat([p["masks"], _box_mask(0, 0, 2, 2)[None]])
        p["boxes"] = torch.cat([p["boxes"], torch.tensor([[0.0, 0.0, 2.0, 2.0]])])
        p["scores"] = torch.cat([p["scores"], torch.tensor([0.01])])
    metrics = coco_map(coco_ground_truth(SAMPLES, NAMES), predictions_to_coco_results(predictions), "segm")
    assert metrics["mAP"] == pytest.approx(1.0)


def _query(image_id: int, category_id: int, top_score: float | None) -> dict:
    scores = torch.tensor([] if top_score is None else [top_score, top_score / 2])
    n = scores.numel()
    return {"image_id": image_id, "category_id": category_id, "scores": scores,
            "masks": torch.zeros(n, H, W, dtype=torch.bool), "boxes": torch.zeros(n, 4)}


PRESENT = {1: {1, 2}, 2: {1, 3}}


@pytest.mark.parametrize(
    "queries, rate, detected_rate",
    [
        # absent prompts (1,3) and (2,2) stay quiet, present ones fire: perfect
        ([_query(1, 1, 0.9), _query(1, 2, 0.8), _query(1, 3, 0.1), _query(2, 2, None), _query(2, 1, 0.7), _query(2, 3, 0.6)], 1.0, 1.0),
        # one absent prompt fires above the threshold, one present prompt does not
        ([_query(1, 3, 0.95), _query(2, 2, 0.2), _query(1, 1, 0.3), _query(2, 1, 0.9)], 0.5, 0.5),
        # every absent prompt fires
        ([_query(1, 3, 0.6), _query(2, 2, 0.5)], 0.0, None),
        # no absent prompts at all: no rate
        ([_query(1, 1, 0.9)], None, 1.0),
    ],
)
def test_prompt_discrimination(queries, rate, detected_rate):
    result = prompt_discrimination(queries, PRESENT, score_threshold=0.5)
    assert result["rate"] == rate
    assert result["detected_rate"] == detected_rate
    assert result["absent_queries"] == sum(q["category_id"] not in PRESENT[q["image_id"]] for q in queries)


def test_format_metrics_lists_each_class():
    gt = coco_ground_truth(SAMPLES, NAMES)
    results = predictions_to_coco_results(_perfect_predictions(SAMPLES))
    text = format_metrics({"segm": coco_map(gt, results, "segm"), "bbox": coco_map(gt, results, "bbox"),
                           "prompt_discrimination": prompt_discrimination(_perfect_predictions(SAMPLES), {1: {1, 2}}, 0.5)})
    assert all(f"AP {name}" in text for name in NAMES)
    assert "prompt discrimination" in text
    assert "present prompts detected: 2/2 (100%)" in text  # the other half of the rate: what was found


def test_a_model_that_finds_nothing_shows_it_beside_its_perfect_rejection():
    silent = [{**q, "scores": torch.zeros(0)} for q in _perfect_predictions(SAMPLES)]
    text = format_metrics({"prompt_discrimination": prompt_discrimination(silent, {1: {1}}, 0.5)})
    assert "(100%)" in text.splitlines()[-2] and text.splitlines()[-1].startswith("present prompts detected: 0/")


def test_before_after_fields_name_both_evaluations():
    from sam3_lora_kit.evaluate import before_after_fields

    before = {"segm_mAP": 0.1, "bbox_mAP": 0.2, "segm": {"per_class": {"a": 0.1}},
              "prompt_discrimination": {"rate": 1.0, "detected_rate": 0.0}}
    after = {"segm_mAP": 0.3, "bbox_mAP": 0.4, "segm": {"per_class": {"a": 0.3}},
             "prompt_discrimination": {"rate": 0.5, "detected_rate": 0.75}}
    fields = before_after_fields(before, after)
    assert fields["map_before"] == 0.1 and fields["map_after"] == 0.3 and fields["bbox_map_after"] == 0.4
    assert fields["map_per_class_after"] == {"a": 0.3} and fields["prompt_discrimination_before"] == 1.0
    assert fields["prompt_detection_before"] == 0.0 and fields["prompt_detection_after"] == 0.75


def test_segm_size_ranges_use_the_mask_area_not_the_box_area():
    """A thin L-shaped false positive covers 199 px (small) inside a 100 x 100 box (large)."""
    size = 200
    truth = torch.zeros(1, size, size, dtype=torch.bool)
    truth[0, 10:30, 10:30] = True  # 400 px: small
    sample = {"image": torch.zeros(3, size, size, dtype=torch.uint8), "image_id": 1, "masks": truth,
              "boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "category_ids": torch.tensor([1])}
    ground_truth = coco_ground_truth([sample], ["thing"])
    thin = torch.zeros(size, size, dtype=torch.bool)
    thin[100, 100:200] = True
    thin[100:200, 100] = True
    prediction = {"image_id": 1, "category_id": 1, "masks": torch.stack([thin, truth[0]]),
                  "boxes": torch.tensor([[100.0, 100.0, 200.0, 200.0], [10.0, 10.0, 30.0, 30.0]]),
                  "scores": torch.tensor([0.9, 0.8])}
    results = predictions_to_coco_results([prediction])
    assert all("bbox" in r for r in results)
    segm = coco_map(ground_truth, results, "segm")
    assert segm["mAP_small"] == pytest.approx(0.5, abs=0.01)  # the false positive ranks first among small objects
    assert segm["mAP_large"] is None  # no large ground truth
    assert coco_map(ground_truth, results, "bbox")["mAP_small"] == pytest.approx(1.0)  # by box, the false positive is large
