"""Dataset items in ``CocoSegmentationDataset``'s format, built directly, for the sam3 tests."""
from __future__ import annotations

from typing import Sequence

import torch

CATEGORY_NAMES = ["cat", "dog", "bird", "fish"]  # category_id k is CATEGORY_NAMES[k - 1]


def make_sample(
    image_id: int = 1,
    boxes: Sequence[Sequence[float]] = ((10, 20, 60, 60), (50, 70, 110, 140), (70, 30, 100, 90)),
    category_ids: Sequence[int] = (1, 2, 1),
    height: int = 150,
    width: int = 120,
) -> dict:
    """An image with one filled rectangle (and its mask) per box; deterministic per ``image_id``."""
    generator = torch.Generator().manual_seed(image_id)
    image = torch.randint(0, 255, (3, height, width), dtype=torch.uint8, generator=generator)
    boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)  # (N, 4) xyxy pixels
    masks = torch.zeros(len(boxes_t), height, width, dtype=torch.bool)  # (N, H, W)
    for j, (x1, y1, x2, y2) in enumerate(boxes_t.int().tolist()):
        masks[j, y1:y2, x1:x2] = True
        image[:, y1:y2, x1:x2] = 50 * (int(category_ids[j]) + 1)
    ids = torch.tensor(category_ids, dtype=torch.int64)
    return {
        "image": image,
        "image_id": image_id,
        "file_name": f"{image_id:06d}.jpg",
        "masks": masks,
        "boxes": boxes_t,
        "category_ids": ids,
        "category_names": [CATEGORY_NAMES[int(c) - 1] for c in ids],
    }
