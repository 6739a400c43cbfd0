"""BatchBuilder: dataset items -> BatchedDatapoint, pinned against the two mistakes peers shipped."""
from __future__ import annotations

import pytest
import torch

from sam3_fixtures import CATEGORY_NAMES, make_sample
from sam3_lora_kit.sam3 import BatchBuilder

IMAGE_SIZE = 112


def matcher_targets(batch) -> dict:
    """What the matcher and losses read: ``Sam3Image.back_convert`` of the batch's targets (it uses no state)."""
    from sam3.model.sam3_image import Sam3Image

    return Sam3Image.back_convert(None, batch.find_targets[0])


def query_rows(batch) -> list[tuple[int, str, int]]:
    """``(image index, query text, number of targets)`` per query."""
    stage, targets = batch.find_inputs[0], batch.find_targets[0]
    return [
        (int(stage.img_ids[q]), batch.find_text_batch[int(stage.text_ids[q])], int(targets.num_boxes[q]))
        for q in range(len(stage.img_ids))
    ]


@pytest.mark.parametrize(
    "height, width, flip",
    [(150, 120, False), (112, 112, False), (224, 224, False), (90, 200, False), (150, 120, True)],
)
def test_known_box_survives_round_trip_to_matcher_format(height: int, width: int, flip: bool) -> None:
    box = (10.0, 20.0, 60.0, 80.0)  # xyxy pixels of the original image
    sample = make_sample(boxes=[box], category_ids=[2], height=height, width=width)
    builder = BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, negative_ratio=0.0, flip_prob=1.0 if flip else 0.0, seed=0)
    targets = matcher_targets(builder([sample]))

    x1, y1, x2, y2 = box
    if flip:
        x1, x2 = width - x2, width - x1
    expected_xyxy = torch.tensor([[x1 / width, y1 / height, x2 / width, y2 / height]])  # normalised
    expected_cxcywh = torch.tensor([[(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height]])
    assert torch.allclose(targets["boxes_xyxy"], expected_xyxy, atol=1e-6)
    assert torch.allclose(targets["boxes"], expected_cxcywh, atol=1e-6)
    assert torch.allclose(targets["boxes_padded"][0], expected_cxcywh, atol=1e-6)
    back_in_pixels = targets["boxes_xyxy"][0] * torch.tensor([width, height, width, height])
    assert torch.allclose(back_in_pixels, torch.tensor([x1, y1, x2, y2]), atol=1e-4)


def test_mask_follows_its_box() -> None:
    sample = make_sample(boxes=[(10, 20, 60, 80)], category_ids=[1], height=150, width=120)
    targets = matcher_targets(BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, negative_ratio=0.0)([sample]))
    mask = targets["masks"][0]  # (S, S) bool
    assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and mask.dtype == torch.bool
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box_px = targets["boxes_xyxy"][0] * IMAGE_SIZE
    assert abs(xs.min().item() - box_px[0].item()) <= 1 and abs(xs.max().item() + 1 - box_px[2].item()) <= 1
    assert abs(ys.min().item() - box_px[1].item()) <= 1 and abs(ys.max().item() + 1 - box_px[3].item()) <= 1


def test_one_query_per_class_holding_only_its_objects() -> None:
    boxes = [(10, 20, 60, 60), (50, 70, 110, 140), (70, 30, 100, 90), (5, 100, 30, 140)]
    sample = make_sample(boxes=boxes, category_ids=[1, 2, 1, 3])
    batch = BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, negative_ratio=0.0)([sample])
    rows = query_rows(batch)
    assert [(text, n) for _, text, n in rows] == [("cat", 2), ("dog", 1), ("bird", 1)]
    targets = matcher_targets(batch)
    scale = torch.tensor([120, 150, 120, 150])
    per_query = torch.split(targets["boxes_xyxy"] * scale, targets["num_boxes"].tolist())
    for (_, text, _), got in zip(rows, per_query):
        want = [b for b, c in zip(boxes, [1, 2, 1, 3]) if CATEGORY_NAMES[c - 1] == text]
        assert sorted(map(tuple, got.round().tolist())) == sorted(tuple(map(float, b)) for b in want)


@pytest.mark.parametrize("negative_ratio, expected_negatives", [(0.0, 0), (0.5, 1), (1.0, 2), (3.0, 2)])
def test_hard_negatives_have_no_targets(negative_ratio: float, expected_negatives: int) -> None:
    sample = make_sample(category_ids=[1, 2, 1])  # cat, dog present; bird, fish absent
    batch = BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, negative_ratio=negative_ratio, seed=3)([sample])
    negatives = [(text, n) for _, text, n in query_rows(batch) if text in ("bird", "fish")]
    assert len(negatives) == expected_negatives
    assert all(n == 0 for _, n in negatives)


def test_several_images_share_one_batch() -> None:
    samples = [make_sample(1, category_ids=[1, 2, 1]), make_sample(2, boxes=[(0, 0, 40, 40)], category_ids=[4])]
    batch = BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, negative_ratio=1.0, seed=0)(samples)
    rows = query_rows(batch)
    assert batch.img_batch.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert [(i, t, n) for i, t, n in rows if n] == [(0, "cat", 2), (0, "dog", 1), (1, "fish", 1)]
    meta = batch.find_metadatas[0]
    assert meta.original_image_id.tolist() == [i + 1 for i, _, _ in rows]
    assert meta.original_size.tolist()[0] == [150, 120]


def test_image_without_objects_gets_a_negative_query() -> None:
    empty = make_sample(boxes=[], category_ids=[])
    rows = query_rows(BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, negative_ratio=1.0)([empty]))
    assert len(rows) == 1 and rows[0][2] == 0


def test_all_categories_queries_every_category() -> None:
    rows = query_rows(BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, all_categories=True)([make_sample()]))
    assert sorted(text for _, text, _ in rows) == sorted(CATEGORY_NAMES)


def test_same_seed_same_batches() -> None:
    samples = [make_sample(i) for i in range(1, 4)]

    def run(seed: int):
        builder = BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, negative_ratio=1.0, flip_prob=0.5, min_scale=0.5, seed=seed)
        return [builder([s]) for s in samples]

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again):
        assert torch.equal(a.img_batch, b.img_batch) and a.find_text_batch == b.find_text_batch
        assert torch.equal(a.find_targets[0].boxes, b.find_targets[0].boxes)
    assert any(not torch.equal(a.img_batch, c.img_batch) for a, c in zip(first, other))


def test_scale_jitter_pads_to_model_size() -> None:
    builder = BatchBuilder(CATEGORY_NAMES, IMAGE_SIZE, negative_ratio=0.0, min_scale=0.5, seed=1)
    batch = builder([make_sample(height=100, width=100, boxes=[(0, 0, 100, 100)], category_ids=[1])])
    assert batch.img_batch.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    x1, y1, x2, y2 = matcher_targets(batch)["boxes_xyxy"][0].tolist()
    assert x1 == y1 == 0 and 0.5 <= x2 <= 1 and x2 == pytest.approx(y2)  # content top-left, padding bottom-right


@pytest.mark.parametrize(
    "kwargs, message",
    [({"category_names": []}, "no categories"), ({"min_scale": 0.0}, "min_scale"), ({"negative_ratio": -1}, "negative_ratio")],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    args = {"category_names": CATEGORY_NAMES, "image_size": IMAGE_SIZE, **kwargs}
    with pytest.raises(ValueError, match=message):
        BatchBuilder(**args)
