"""Turn one raw image record into clean COCO dicts: checked, clipped, bbox and area from the mask."""
from __future__ import annotations

from dataclasses import dataclass, field

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.geometry import (box_area, box_polygon, check_box, check_rle, clean_polygons, polygons_bbox,
                                          polygons_to_rle, rle_area_bbox)
from sam3_lora_kit.data.images import read_image
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import RawAnnotation, RawImage


@dataclass
class CleanImage:
    """An image checked against its file, with annotations ready for COCO (ids filled in later)."""

    file_name: str
    width: int
    height: int
    annotations: list[dict] = field(default_factory=list)  # category (name), segmentation, bbox, area, iscrowd
    dropped: int = 0  # annotations left out
    data: bytes | None = field(default=None, repr=False)  # the file's bytes, read once (dropped once written)
    export_name: str | None = None  # the export's file name where ``file_name`` had to differ from it


def clean_annotation(raw: RawAnnotation, width: int, height: int, declared: tuple[int, int] | None,
                     quirks: QuirkLog) -> dict | None:
    """A COCO annotation dict (without ids) or None when nothing of the mask is left."""
    seg = raw.segmentation
    # the output bbox comes from the mask: the input bbox is only checked where it is the mask
    box = check_box(raw.bbox, width, height, raw.where, quirks) if seg is None and raw.bbox is not None else None
    if isinstance(seg, dict):
        rle = check_rle(seg, width, height, declared, raw.where, quirks)
        area, bbox = rle_area_bbox(rle)
        if area == 0:
            quirks.add("empty_mask", raw.where)
            return None
        return {"category": raw.category, "segmentation": rle, "bbox": bbox, "area": area, "iscrowd": raw.iscrowd}
    if seg is None:
        if box is None:
            raise DataError(raw.where, "annotation has neither a segmentation nor a bbox")
        polygons = [box_polygon(*box)] if box[2] > 0 and box[3] > 0 else []
        quirks.add("box_as_mask", raw.where)
    else:
        polygons = clean_polygons(seg, width, height, raw.where, quirks)
        if not polygons:
            return None  # every polygon was too short (already reported)
    if not polygons:
        quirks.add("empty_mask", raw.where)
        return None
    if seg is None:  # the box's own rectangle: its raster area without pycocotools
        area = box_area(*box, width, height)
    else:
        area = int(mask_area(polygons_to_rle(polygons, width, height)))
    if area == 0:
        quirks.add("empty_mask", raw.where)
        return None
    bbox = list(box) if seg is None else polygons_bbox(polygons)
    return {"category": raw.category, "segmentation": polygons, "bbox": [round(v, 3) for v in bbox],
            "area": area, "iscrowd": raw.iscrowd}


def mask_area(rle: dict) -> int:
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(rle))


def clean_image(raw: RawImage, quirks: QuirkLog) -> CleanImage | None:
    """Check the image file (missing -> reported and None; undecodable -> ``DataError``) and clean annotations."""
    if not raw.path.is_file():
        quirks.add("missing_image", f"{raw.path} (listed in {raw.where})")
        return None
    checked = raw.checked if raw.checked is not None else read_image(raw.path)
    raw.checked = None  # the bytes travel on in the clean image only
    width, height = checked.width, checked.height
    declared = (raw.width, raw.height) if raw.width and raw.height else None
    if declared is None and raw.declares_size:
        quirks.add("missing_size", str(raw.path))
    elif declared is not None and declared != (width, height):
        quirks.add("size_mismatch", f"{raw.path}: declared {declared[0]}x{declared[1]}, file {width}x{height}")
    image = CleanImage(raw.path.name if "/" not in raw.file_name else raw.file_name, width, height,
                       data=checked.data)
    for ann in raw.annotations:
        cleaned = clean_annotation(ann, width, height, declared, quirks)
        if cleaned is None:
            image.dropped += 1
        else:
            image.annotations.append(cleaned)
    if not image.annotations:
        quirks.add("negative_image", str(raw.path))
    return image
