"""Polygons, RLE masks and boxes: checks, clipping, and bbox/area from the mask (pycocotools)."""
from __future__ import annotations

import math

import numpy as np
from pycocotools import mask as mask_utils

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import Polygons, Rle


def check_numbers(values: list, where: str) -> list[float]:
    """Return ``values`` as finite floats, or raise naming the bad one."""
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(where, f"coordinate {value!r} is not a number")
        if not math.isfinite(value):
            raise DataError(where, f"coordinate {value!r} is not finite")
        out.append(float(value))
    return out


def box_polygon(x: float, y: float, w: float, h: float) -> list[float]:
    """The rectangle (x, y, w, h) as one polygon."""
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def clean_polygons(polygons: list, width: int, height: int, where: str, quirks: QuirkLog) -> Polygons:
    """Check, de-duplicate the closing point, clip to the image, drop polygons under 3 points."""
    if not isinstance(polygons, list):
        raise DataError(where, f"segmentation must be a list of polygons or an RLE dict, got {type(polygons).__name__}")
    if polygons and all(isinstance(v, (int, float)) for v in polygons):
        polygons = [polygons]  # a single flat polygon
    cleaned = []
    for polygon in polygons:
        if not isinstance(polygon, list):
            raise DataError(where, f"polygon must be a list of numbers, got {type(polygon).__name__}")
        coords = check_numbers(polygon, where)
        if len(coords) % 2:
            raise DataError(where, f"polygon has an odd number of coordinates ({len(coords)})")
        if len(coords) >= 8 and coords[:2] == coords[-2:]:
            coords = coords[:-2]
            quirks.add("closing_point", where)
        if len(coords) < 6:
            quirks.add("short_polygon", f"{where} ({len(coords) // 2} points)")
            continue
        xs = np.clip(coords[0::2], 0.0, float(width))
        ys = np.clip(coords[1::2], 0.0, float(height))
        if not (np.array_equal(xs, coords[0::2]) and np.array_equal(ys, coords[1::2])):
            quirks.add("clipped", where)
        flat = np.empty(len(coords))
        flat[0::2], flat[1::2] = xs, ys
        cleaned.append([round(float(v), 3) for v in flat])
    return cleaned


def polygons_to_rle(polygons: Polygons, width: int, height: int) -> dict:
    """One merged compressed RLE for ``polygons``."""
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def polygons_bbox(polygons: Polygons) -> list[float]:
    """Tight (x, y, w, h) box around the polygons' vertices."""
    xs = np.concatenate([np.asarray(p[0::2]) for p in polygons])
    ys = np.concatenate([np.asarray(p[1::2]) for p in polygons])
    x0, y0 = float(xs.min()), float(ys.min())
    return [round(x0, 3), round(y0, 3), round(float(xs.max()) - x0, 3), round(float(ys.max()) - y0, 3)]


def check_rle(rle: dict, width: int, height: int, declared: tuple[int, int] | None, where: str,
              quirks: QuirkLog) -> dict:
    """Validate an RLE and return it compressed (counts as text), resized if only the JSON size was off."""
    size, counts = rle.get("size"), rle.get("counts")
    if (not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in size)):
        raise DataError(where, f"RLE 'size' must be [height, width], got {size!r}")
    if not isinstance(counts, (str, list)):
        raise DataError(where, "RLE 'counts' must be a string or a list of integers")
    if isinstance(counts, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise DataError(where, "RLE 'counts' must be non-negative integers")
        if sum(counts) != size[0] * size[1]:
            raise DataError(where, f"RLE counts sum to {sum(counts)}, not height*width = {size[0] * size[1]}")
        compressed = mask_utils.frPyObjects(rle, size[0], size[1])
    else:
        compressed = {"size": list(size), "counts": counts.encode("ascii")}
        try:
            mask_utils.area(compressed)
        except Exception as error:  # noqa: BLE001 (pycocotools raises plain exceptions)
            raise DataError(where, f"RLE 'counts' does not decode ({error})") from None
    if list(size) != [height, width]:
        if declared is None or list(size) != [declared[1], declared[0]]:
            raise DataError(where, f"RLE size {size} does not match the image ({height}x{width})")
        dense = mask_utils.decode(compressed)  # (h, w) of the declared size: one mask at a time
        fixed = np.zeros((height, width), dtype=np.uint8)
        h, w = min(height, dense.shape[0]), min(width, dense.shape[1])
        fixed[:h, :w] = dense[:h, :w]
        compressed = mask_utils.encode(np.asfortranarray(fixed))
        quirks.add("clipped", where)
    return {"size": [height, width], "counts": compressed["counts"].decode("ascii")}


def rle_area_bbox(rle: dict) -> tuple[int, list[float]]:
    """Pixel area and tight (x, y, w, h) box of a text-counts RLE."""
    encoded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return int(mask_utils.area(encoded)), [float(v) for v in mask_utils.toBbox(encoded)]


def check_box(bbox: list, width: int, height: int, where: str, quirks: QuirkLog) -> tuple[float, float, float, float]:
    """Check an (x, y, w, h) box and clip it to the image."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise DataError(where, f"bbox must be [x, y, width, height], got {bbox!r}")
    x, y, w, h = check_numbers(list(bbox), where)
    if w < 0 or h < 0:
        raise DataError(where, f"bbox {bbox!r} has a negative size")
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        quirks.add("clipped", where)
    return x0, y0, x1 - x0, y1 - y0
