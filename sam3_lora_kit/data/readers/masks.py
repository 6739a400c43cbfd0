"""Semantic-segmentation mask exports: ``<split>/_classes.csv`` plus ``<name>.jpg`` and ``<name>_mask.png``.

The mask PNG holds one class index per pixel (the ``Pixel Value`` column of ``_classes.csv``).
Each connected component (8-connected) of a non-background class becomes one instance.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator

import numpy as np

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.paths import SPLIT_NAMES, check_disk_name, find_split_dir, glob_files, list_images
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import RawAnnotation, RawImage

MASK_SUFFIX = "_mask.png"
BACKGROUND_NAMES = {"background", "_background_", "bg", "unlabeled", "unlabelled"}


def read_classes_csv(path: Path) -> dict[int, str]:
    """``Pixel Value, Class`` rows -> {pixel value: class name}."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason})") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(path, "empty class list")
    classes: dict[int, str] = {}
    for number, row in enumerate(rows, 1):
        if len(row) < 2:
            raise DataError(f"{path}:{number}", "expected 'pixel value, class name'")
        try:
            value = int(row[0].strip())
        except ValueError:
            if number == 1:
                continue  # header row
            raise DataError(f"{path}:{number}", f"pixel value {row[0]!r} is not an integer") from None
        name = row[1].strip()
        if not name:
            raise DataError(f"{path}:{number}", f"pixel value {value} has an empty class name")
        classes[value] = name
    return classes


def mask_instances(mask: np.ndarray, classes: dict[int, str], where: str) -> Iterator[tuple[str, np.ndarray]]:
    """(class name, component mask (H, W) bool) for each connected component of each foreground class."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    for value in np.unique(mask):
        name = classes.get(int(value))
        if name is None:
            raise DataError(where, f"pixel value {int(value)} is not in _classes.csv")
        if not name or name.lower() in BACKGROUND_NAMES:
            continue
        labels, count = ndimage.label(mask == value, structure=structure)  # (H, W) int
        for index in range(1, count + 1):
            yield name, labels == index


class MaskReader:
    """Reads semantic mask exports, one mask PNG at a time."""

    format = "masks"

    def __init__(self, root: Path, quirks: QuirkLog) -> None:
        self.root, self.quirks = root, quirks
        self._dirs = {s: d for s in SPLIT_NAMES if (d := find_split_dir(root, s)) and (d / "_classes.csv").is_file()}
        self._classes = {s: read_classes_csv(d / "_classes.csv") for s, d in self._dirs.items()}

    def splits(self) -> list[str]:
        return list(self._dirs)

    def categories(self) -> list[str]:
        """Foreground class names ordered by pixel value over all splits."""
        first: dict[str, int] = {}
        for split, classes in self._classes.items():
            for value, name in classes.items():
                if name.lower() in BACKGROUND_NAMES:
                    self.quirks.add("background_class", f"{self._dirs[split] / '_classes.csv'}: {value} {name!r}")
                    continue
                first[name] = min(first.get(name, value), value)
        return sorted(first, key=lambda n: (first[n], n))

    def iter_images(self, split: str) -> Iterator[RawImage]:
        from PIL import Image

        folder, classes = self._dirs[split], self._classes[split]
        images = [p for p in list_images(folder) if not p.name.endswith(MASK_SUFFIX)]
        stems = {p.stem for p in images}
        for mask_path in glob_files(folder, f"*{MASK_SUFFIX}"):
            if mask_path.name[: -len(MASK_SUFFIX)] not in stems:
                self.quirks.add("orphan_label", str(mask_path))
        for path in images:
            mask_path = folder / f"{path.stem}{MASK_SUFFIX}"
            record = RawImage(file_name=check_disk_name(path), path=path, where=str(mask_path), declares_size=False)
            if mask_path.is_file():
                from pycocotools import mask as mask_utils

                from sam3_lora_kit.data.images import check_image, read_image

                check_image(mask_path)
                with Image.open(mask_path) as image:
                    if image.mode not in ("L", "P", "I", "I;16"):
                        raise DataError(mask_path, f"mask must be single-channel, got mode {image.mode}")
                    mask = np.asarray(image)  # (H, W) class values
                if path.is_file():  # a missing image is reported when the image is cleaned
                    record.checked = read_image(path)  # read once: clean_image takes it from here
                    if (record.checked.width, record.checked.height) != (mask.shape[1], mask.shape[0]):
                        raise DataError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {path.name} "
                                        f"is {record.checked.width}x{record.checked.height}")
                record.height, record.width = mask.shape  # RLE sizes must match the image
                for name, component in mask_instances(mask, classes, str(mask_path)):
                    rle = mask_utils.encode(np.asfortranarray(component.astype(np.uint8)))
                    rle = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
                    record.annotations.append(RawAnnotation(name, rle, None, str(mask_path)))
            yield record
