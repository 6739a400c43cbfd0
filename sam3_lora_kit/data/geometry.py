"""Polygons, RLE masks and boxes: checks, clipping, and bbox/area from the mask (pycocotools).

NumPy and pycocotools are imported where a polygon or an RLE needs them, so a box-only export
(Pascal VOC) is cleaned without loading them (``box_area`` reproduces pycocotools' raster).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import Polygons, Rle

if TYPE_CHECKING:
    import numpy as np

RASTER_SCALE = 5  # pycocotools' rleFrPoly upsamples polygon vertices by 5 before rasterising


def check_numbers(values: list, where: str) -> list[float]:
    """Return ``values`` as finite floats, or raise naming the bad one."""
    if all(type(v) is float for v in values) and all(map(math.isfinite, values)):
        return list(values)  # the common case: already finite floats
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(where, f"coordinate {value!r} is not a number")
        try:
            number = float(value)
        except OverflowError:
            raise DataError(where, f"coordinate {str(value)[:20]}... is too large for a float") from None
        if not math.isfinite(number):
            raise DataError(where, f"coordinate {value!r} is not finite")
        out.append(number)
    return out


def box_polygon(x: float, y: float, w: float, h: float) -> list[float]:
    """The rectangle (x, y, w, h) as one polygon."""
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def box_area(x: float, y: float, w: float, h: float, width: int, height: int) -> int:
    """Pixel area of ``box_polygon(x, y, w, h)`` rasterised by pycocotools (``rleFrPoly``) in a width x height image.

    For this rectangle ``rleFrPoly`` marks column n when its upsampled top edge passes
    ``5 n + 2``, from the row its top edge rounds to down to the row its bottom edge rounds to;
    the same float operations as its C code give the same rows and columns.
    """
    x0, x1 = _upsampled(x), _upsampled(x + w)
    first, last = max(-((2 - x0) // RASTER_SCALE), 0), min((x1 - 3) // RASTER_SCALE, width - 1)
    if last < first:
        return 0
    return (last - first + 1) * (_raster_row(_upsampled(y + h), height) - _raster_row(_upsampled(y), height))


def _upsampled(value: float) -> int:
    return int(RASTER_SCALE * value + 0.5)  # C's (int)(scale * xy + .5)


def _raster_row(v: int, height: int) -> int:
    """rleFrPoly's downsampled row for an upsampled y: ``ceil(clamp((v + .5) / 5 - .5, 0, h))``."""
    row = (v + 0.5) / RASTER_SCALE - 0.5
    return math.ceil(0.0 if row < 0 else (float(height) if row > height else row))


def _coords(polygon: object, where: str) -> np.ndarray:
    """A polygon as a float64 array of finite numbers, or raise naming the bad value."""
    import numpy as np

    if isinstance(polygon, np.ndarray):  # a reader's own array (YOLO): float64, already checked finite
        return polygon
    if not isinstance(polygon, list):
        raise DataError(where, f"polygon must be a list of numbers, got {type(polygon).__name__}")
    if set(map(type, polygon)) <= {float, int}:  # the common case, checked in bulk
        try:
            coords = np.array(polygon, dtype=np.float64)
        except OverflowError:  # an integer beyond float range: check_numbers names it
            coords = None
        if coords is not None and np.isfinite(coords).all():
            return coords
    return np.array(check_numbers(polygon, where), dtype=np.float64)  # raises on the bad value


def round3(values: np.ndarray) -> list[float]:
    """``[round(v, 3) for v in values]``, exactly as Python rounds, in bulk.

    ``rint(v * 1000) / 1000`` is the double nearest to the rounded decimal, as Python's
    ``round`` gives, unless the product's own rounding error moved ``v * 1000`` across a half
    (possible only within ~1e-7 of one for |v| < 1e6): those few values go through ``round``.
    """
    import numpy as np

    scaled = values * 1000.0
    rounded = np.rint(scaled)
    out = (rounded / 1000.0).tolist()
    doubtful = (np.abs(np.abs(scaled - rounded) - 0.5) < 1e-6) | ~(np.abs(values) < 1e6)
    for i in np.flatnonzero(doubtful).tolist():
        out[i] = round(float(values[i]), 3)
    return out


def clip_polygon(coords: list[float], width: float, height: float) -> list[float]:
    """The part of a flat polygon inside [0, width] x [0, height] (Sutherland-Hodgman), flat; may be short."""
    points = list(zip(coords[0::2], coords[1::2]))
    for axis, limit, upper in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if not points:
            break
        kept: list[tuple[float, float]] = []
        prev = points[-1]
        prev_in = prev[axis] <= limit if upper else prev[axis] >= limit
        for point in points:
            point_in = point[axis] <= limit if upper else point[axis] >= limit
            if point_in != prev_in:  # the edge crosses the line: add the crossing, exactly on the line
                t = (limit - prev[axis]) / (point[axis] - prev[axis])
                other = prev[1 - axis] + t * (point[1 - axis] - prev[1 - axis])
                kept.append((limit, other) if axis == 0 else (other, limit))
            if point_in:
                kept.append(point)
            prev, prev_in = point, point_in
        points = kept
    return [v for point in points for v in point]


def _without_repeats(flat: list[float]) -> list[float]:
    """A flat polygon without consecutive repeated points (the last compared with the first too)."""
    points = list(zip(flat[0::2], flat[1::2]))
    kept = [p for i, p in enumerate(points) if p != points[i - 1]] if len(points) > 1 else points
    return [v for point in kept for v in point]


def _shoelace(flat: list[float]) -> float:
    """Signed area of a flat polygon."""
    xs, ys = flat[0::2], flat[1::2]
    return sum(xs[i - 1] * ys[i] - xs[i] * ys[i - 1] for i in range(len(xs))) / 2


def clean_polygons(polygons: list, width: int, height: int, where: str, quirks: QuirkLog) -> Polygons:
    """Check, de-duplicate the closing point, clip to the image, drop polygons under 3 points.

    A polygon crossing the image border is clipped to it (Sutherland-Hodgman); one left with
    fewer than 3 points or no area (it lay outside the image) is dropped, and an annotation left
    with no polygon is reported as ``empty_mask``.
    """
    import numpy as np

    if not isinstance(polygons, list):
        raise DataError(where, f"segmentation must be a list of polygons or an RLE dict, got {type(polygons).__name__}")
    if polygons and all(isinstance(v, (int, float)) for v in polygons):
        polygons = [polygons]  # a single flat polygon
    cleaned, clipped_away = [], False
    for polygon in polygons:
        coords = _coords(polygon, where)  # (2P,) x0, y0, x1, y1, ...
        n = len(coords)
        if n % 2:
            raise DataError(where, f"polygon has an odd number of coordinates ({n})")
        if n >= 8 and coords[0] == coords[-2] and coords[1] == coords[-1]:
            coords, n = coords[:-2], n - 2
            quirks.add("closing_point", where)
        if n < 6:
            quirks.add("short_polygon", f"{where} ({n // 2} points)")
            continue
        xs, ys = coords[0::2], coords[1::2]
        if xs.min() >= 0.0 and ys.min() >= 0.0 and xs.max() <= width and ys.max() <= height:
            cleaned.append(round3(coords))  # inside the image: the common case
            continue
        quirks.add("clipped", where)
        flat = _without_repeats(round3(np.array(clip_polygon(coords.tolist(), float(width), float(height)))))
        if len(flat) < 6 or _shoelace(flat) == 0:
            clipped_away = True  # it lay outside the image
            continue
        cleaned.append(flat)
    if not cleaned and clipped_away:
        quirks.add("empty_mask", where)
    return cleaned


def polygons_to_rle(polygons: Polygons, width: int, height: int) -> dict:
    """One merged compressed RLE for ``polygons`` (one polygon's RLE needs no merge: the same bytes)."""
    from pycocotools import mask as mask_utils

    rles = mask_utils.frPyObjects(polygons, height, width)
    return rles[0] if len(rles) == 1 else mask_utils.merge(rles)


def polygons_bbox(polygons: Polygons) -> list[float]:
    """Tight (x, y, w, h) box around the polygons' vertices."""
    x0, x1 = min(min(p[0::2]) for p in polygons), max(max(p[0::2]) for p in polygons)
    y0, y1 = min(min(p[1::2]) for p in polygons), max(max(p[1::2]) for p in polygons)
    x0, y0 = float(x0), float(y0)
    return [round(x0, 3), round(y0, 3), round(float(x1) - x0, 3), round(float(y1) - y0, 3)]


def check_rle(rle: dict, width: int, height: int, declared: tuple[int, int] | None, where: str,
              quirks: QuirkLog) -> dict:
    """Validate an RLE and return it compressed (counts as text), resized if only the JSON size was off."""
    import numpy as np
    from pycocotools import mask as mask_utils

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
        covered = compressed_rle_length(counts, where)
        if covered != size[0] * size[1]:
            raise DataError(where, f"RLE counts cover {covered} pixels, not height*width = {size[0] * size[1]}")
        compressed = {"size": list(size), "counts": counts.encode("ascii")}
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


def compressed_rle_length(counts: str, where: str) -> int:
    """Pixels covered by COCO's compressed RLE text ``counts``; raises on text that does not decode.

    The same decoding as pycocotools' ``rleFrString``: each run length is 5-bit groups in
    characters 48..111 (bit 5: more groups follow, bit 4 of the last: negative), and from the
    third run on each value is stored as the difference to the run two before. pycocotools
    itself accepts any text and only fails (or reads garbage) when the mask is decoded.
    """
    runs: list[int] = []
    total, position, end = 0, 0, len(counts)
    while position < end:
        value, shift, more = 0, 0, True
        while more:
            if position == end:
                raise DataError(where, "RLE 'counts' text ends in the middle of a run length")
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                raise DataError(where, f"RLE 'counts' has a character outside COCO's alphabet: {counts[position]!r}")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value -= 1 << shift  # sign-extend the last group
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise DataError(where, f"RLE 'counts' decodes to a negative run length ({value})")
        runs.append(value)
        total += value
    return total


def rle_area_bbox(rle: dict) -> tuple[int, list[float]]:
    """Pixel area and tight (x, y, w, h) box of a text-counts RLE."""
    from pycocotools import mask as mask_utils

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
