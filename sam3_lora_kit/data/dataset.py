"""``CocoSegmentationDataset``: a clean COCO split as tensors, what SAM 3 training reads."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.paths import safe_join
from sam3_lora_kit.data.writer import ANNOTATION_FILE


def annotation_mask(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons or RLE) into a (H, W) bool mask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")
               if isinstance(segmentation["counts"], str) else segmentation["counts"]}
    return mask_utils.decode(rle).astype(bool)  # (H, W)


class CocoSegmentationDataset(torch.utils.data.Dataset):
    """``root/<split>/_annotations.coco.json`` plus images; ``ds[i]`` is one image and its instances.

    Items: ``image`` uint8 (3, H, W), ``image_id``, ``file_name``, ``masks`` bool (N, H, W),
    ``boxes`` float32 (N, 4) xyxy pixels, ``category_ids`` int64 (N,) in 1..K, ``category_names``.
    ``image_size=S`` resizes to S x S (masks nearest, boxes scaled alike); ``transforms`` is called
    on each item last.
    """

    def __init__(self, root: str | Path, split: str, image_size: int | None = None,
                 transforms: Callable[[dict], dict] | None = None) -> None:
        self.root, self.split = Path(root), split
        self.image_size, self.transforms = image_size, transforms
        self.coco_path = self.root / split / ANNOTATION_FILE
        if not self.coco_path.is_file():
            raise DataError(self.coco_path, "missing (convert the export first: sam3-lora convert SRC DST)")
        try:
            doc = json.loads(self.coco_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DataError(self.coco_path, f"not valid JSON ({error})") from None
        self.categories = sorted(({"id": c["id"], "name": c["name"]} for c in doc["categories"]),
                                 key=lambda c: c["id"])
        if [c["id"] for c in self.categories] != list(range(1, len(self.categories) + 1)):
            raise DataError(self.coco_path, "category ids must be 1..K (convert the export with sam3-lora convert)")
        self.category_names = [c["name"] for c in self.categories]
        self.images = list(doc["images"])
        self._annotations: dict[int, list[dict]] = {}
        for ann in doc["annotations"]:
            self._annotations.setdefault(ann["image_id"], []).append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        info = self.images[index]
        # the image may be a link (``convert --link`` writes links to the source images)
        path = safe_join(self.coco_path.parent, info["file_name"], self.coco_path, allow_link=True)
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))  # (H, W, 3)
        height, width = rgb.shape[:2]
        anns = self._annotations.get(info["id"], [])
        masks = np.zeros((len(anns), height, width), dtype=bool)  # (N, H, W)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)  # (N, 4) xyxy
        for i, ann in enumerate(anns):
            masks[i] = annotation_mask(ann["segmentation"], height, width)
            x, y, w, h = ann["bbox"]
            boxes[i] = (x, y, x + w, y + h)
        item = {
            "image": torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous(),  # (3, H, W)
            "image_id": int(info["id"]),
            "file_name": info["file_name"],
            "masks": torch.from_numpy(masks),
            "boxes": torch.from_numpy(boxes),
            "category_ids": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "category_names": [self.category_names[a["category_id"] - 1] for a in anns],
        }
        if self.image_size is not None:
            item = resize_item(item, self.image_size)
        return self.transforms(item) if self.transforms is not None else item


def resize_item(item: dict, size: int) -> dict:
    """Resize an item to ``size x size``: image bilinear, masks nearest, boxes scaled."""
    import torch.nn.functional as F

    _, height, width = item["image"].shape
    image = F.interpolate(item["image"][None].float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[0]
    masks = item["masks"]
    if masks.shape[0]:
        masks = F.interpolate(masks[None].float(), size=(size, size), mode="nearest")[0] > 0.5
    else:
        masks = torch.zeros((0, size, size), dtype=torch.bool)
    scale = torch.tensor([size / width, size / height, size / width, size / height], dtype=torch.float32)
    return {**item, "image": image.round().clamp(0, 255).to(torch.uint8), "masks": masks,
            "boxes": item["boxes"] * scale}
