"""Write one split of a clean COCO dataset: images copied (or linked) as they come, JSON at the end."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sam3_lora_kit.data.clean import CleanImage
from sam3_lora_kit.data.errors import DataError

ANNOTATION_FILE = "_annotations.coco.json"


class SplitWriter:
    """Collects one split's COCO records (compact polygons/RLE, never dense masks) and copies its images."""

    def __init__(self, folder: Path, link: bool = False) -> None:
        self.folder, self.link = folder, link
        self.images: list[dict] = []
        self.annotations: list[dict] = []  # "category" holds the name until ``finish``
        self._names: set[str] = set()
        self._made: set[Path] = {folder}  # folders known to exist
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, source: Path, image: CleanImage) -> None:
        """Place the image file and record its annotations."""
        if image.file_name in self._names:
            raise DataError(source, f"file name {image.file_name!r} appears twice in one split")
        self._names.add(image.file_name)
        target = self.folder / image.file_name
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        if self.link:
            os.symlink(source.resolve(), target)
        elif image.data is not None:  # the bytes the cleaner read and checked: no second read
            with open(target, "wb") as out:
                out.write(image.data)
        else:
            shutil.copyfile(source, target)
        image.data = None
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": image.file_name, "width": image.width,
                            "height": image.height})
        for ann in image.annotations:
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, **ann})

    def finish(self, categories: list[str]) -> Path:
        """Write ``_annotations.coco.json`` with category ids 1..K in the order of ``categories``."""
        ids = {name: k for k, name in enumerate(categories, 1)}
        annotations = []
        for ann in self.annotations:
            ann = dict(ann)
            ann["category_id"] = ids[ann.pop("category")]
            annotations.append(ann)
        doc = {
            "info": {"description": "converted by sam3-lora-kit"},
            "images": self.images,
            "annotations": annotations,
            "categories": [{"id": k, "name": name, "supercategory": "object"} for name, k in ids.items()],
        }
        path = self.folder / ANNOTATION_FILE
        path.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        return path
