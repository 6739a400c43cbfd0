"""The bundled sample: a small, deterministic Roboflow-style export of textured, overlapping shapes.

``python -m sam3_lora_kit.data.sample data/sample`` regenerates ``data/sample`` byte for byte:
``coco-segmentation/{train,valid,test}/`` (Roboflow COCO Segmentation, with the phantom
category id 0) and ``yolo-segmentation/`` (``data.yaml`` plus ``images/`` and ``labels/``).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle")  # category ids 1..3; id 0 is Roboflow's phantom "shapes"
SPLITS = {"train": 20, "valid": 6, "test": 4}  # images per split
IMAGE_SIZE = 160  # pixels, square
PROJECT = "shapes"


def sample_data_dir() -> Path:
    """The repository's ``data/sample`` folder; generated into a cache folder when the kit is installed elsewhere."""
    repo = Path(__file__).resolve().parents[2] / "data" / "sample"
    if (repo / "coco-segmentation").is_dir():
        return repo
    return cached_sample(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sam3-lora-kit" / "sample")


def _complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished sample (``README.md`` is written last)."""
    return (folder / "coco-segmentation").is_dir() and (folder / "README.md").is_file()


def cached_sample(cache: Path) -> Path:
    """``cache`` holding the sample, generated if needed: it is either complete or absent, never half-written.

    The sample is made in a temporary sibling folder and renamed into place when complete; when
    another process got there first, its copy is kept and this one discarded.
    """
    if _complete(cache):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.partial-", dir=cache.parent))
    try:
        make_sample_dataset(tmp)
        if cache.exists() and not _complete(cache):  # left half-written by an older version of the kit
            stale = Path(tempfile.mkdtemp(prefix=f".{cache.name}.stale-", dir=cache.parent))
            try:
                cache.rename(stale / "sample")
            except FileNotFoundError:
                pass  # another process moved it away first
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(cache)
        except OSError:
            if not _complete(cache):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; the loser's copy otherwise
    return cache


def _shape_mask(kind: str, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """(H, W) bool mask of one shape centred at (cx, cy) with radius r."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    if kind == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
    sides = 4 if kind == "square" else 3
    corners = [(cx + r * np.cos(angle + 2 * np.pi * k / sides), cy + r * np.sin(angle + 2 * np.pi * k / sides))
               for k in range(sides)]
    inside = np.ones((size, size), dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def _texture(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """(H, W, 3) float texture: a colour with stripes or checks and noise."""
    ys, xs = np.mgrid[0:size, 0:size]
    period, kind = rng.integers(4, 12), rng.integers(3)
    pattern = [np.sin(2 * np.pi * (xs + ys) / period), ((xs // period + ys // period) % 2) * 2 - 1.0,
               np.zeros((size, size))][kind]
    noise = rng.normal(0, 12, (size, size, 1))
    return base[None, None, :] + 25 * pattern[..., None] + noise


def _simplify(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of an open polyline (N, 2)."""
    if len(points) < 3:
        return points
    start, end = points[0], points[-1]
    line = end - start
    norm = np.hypot(*line)
    diff = points - start
    dist = np.abs(line[0] * diff[:, 1] - line[1] * diff[:, 0]) / norm if norm > 0 else np.hypot(*diff.T)
    index = int(np.argmax(dist))
    if dist[index] <= tolerance:
        return np.stack([start, end])
    return np.concatenate([_simplify(points[: index + 1], tolerance)[:-1], _simplify(points[index:], tolerance)])


def mask_polygon(mask: np.ndarray, tolerance: float = 0.6) -> list[float]:
    """The outline of a single-component, hole-free (H, W) mask as one flat polygon in pixels."""
    import contourpy

    padded = np.pad(mask.astype(float), 1)
    lines = contourpy.contour_generator(z=padded).lines(0.5)
    ring = max(lines, key=len)[:-1] - 1 + 0.5  # back to pixel coordinates, pixel centres at +0.5
    half = len(ring) // 2  # simplify the closed ring as two open halves
    points = np.concatenate([_simplify(ring[: half + 1], tolerance)[:-1], _simplify(np.vstack([ring[half:], ring[:1]]),
                                                                                    tolerance)[:-1]])
    return [round(float(v), 3) for v in points.reshape(-1)]


def _draw_image(rng: np.random.Generator, n_shapes: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """A textured (H, W, 3) uint8 image and its visible instances [(class index, mask)], occlusion applied."""
    from scipy import ndimage

    size = IMAGE_SIZE
    image = _texture(rng, size, rng.uniform(60, 200, 3))
    ys = np.mgrid[0:size, 0:size][0]
    image += (ys / size * 40 - 20)[..., None]  # a soft gradient
    owner = np.full((size, size), -1)  # which shape is on top at each pixel
    shapes: list[tuple[int, np.ndarray]] = []
    while len(shapes) < n_shapes:
        kind = int(rng.integers(len(CLASSES)))
        r = rng.uniform(16, 32)
        cx, cy = rng.uniform(r * 0.6, size - r * 0.6, 2)
        full = _shape_mask(CLASSES[kind], cx, cy, r, rng.uniform(0, 2 * np.pi), size)
        trial = owner.copy()
        trial[full] = len(shapes)
        visible = [trial == i for i in range(len(shapes) + 1)]
        ok = all(m.sum() >= 150 and ndimage.label(m)[1] == 1 and (ndimage.binary_fill_holes(m) == m).all()
                 for m in visible)
        if not ok:
            continue  # would hide too much, split a shape in two, or punch a hole: draw another
        owner = trial
        image[full] = _texture(rng, size, rng.uniform(30, 230, 3))[full]
        shapes.append((kind, full))
    instances = [(kind, owner == i) for i, (kind, _) in enumerate(shapes)]
    return np.clip(image, 0, 255).astype(np.uint8), instances


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=85, optimize=False)
    return buffer.getvalue()


def _coco_doc() -> dict:
    info = {"year": "2025", "version": "1", "description": "Exported from roboflow.com (synthetic sample)",
            "contributor": "sam3-lora-kit", "url": "", "date_created": "2025-01-01T00:00:00+00:00"}
    categories = [{"id": 0, "name": PROJECT, "supercategory": "none"}]
    categories += [{"id": k, "name": name, "supercategory": PROJECT} for k, name in enumerate(CLASSES, 1)]
    return {"info": info, "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/",
                                        "name": "CC BY 4.0"}],
            "categories": categories, "images": [], "annotations": []}


def make_sample_dataset(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the sample export (both layouts) into ``out_dir``, replacing earlier copies; returns ``out_dir``."""
    out = Path(out_dir)
    coco_root, yolo_root = out / "coco-segmentation", out / "yolo-segmentation"
    for folder in (coco_root, yolo_root):
        if folder.exists():
            shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in SPLITS.items():
        doc = _coco_doc()
        (coco_root / split).mkdir(parents=True)
        (yolo_root / split / "images").mkdir(parents=True)
        (yolo_root / split / "labels").mkdir(parents=True)
        for _ in range(count):
            n_shapes = 0 if index == 3 else int(rng.integers(2, 5))  # image 3 is a negative
            image, instances = _draw_image(rng, n_shapes)
            data = _jpeg(image)
            name = f"shapes_{index:03d}_png.rf.{hashlib.md5(data).hexdigest()}.jpg"
            image_id = len(doc["images"])
            doc["images"].append({"id": image_id, "license": 1, "file_name": name, "height": IMAGE_SIZE,
                                  "width": IMAGE_SIZE, "date_captured": "2025-01-01T00:00:00+00:00"})
            lines = []
            for kind, mask in instances:
                polygon = mask_polygon(mask)
                xs, ys = polygon[0::2], polygon[1::2]
                doc["annotations"].append({
                    "id": len(doc["annotations"]), "image_id": image_id, "category_id": kind + 1,
                    "bbox": [min(xs), min(ys), round(max(xs) - min(xs), 3), round(max(ys) - min(ys), 3)],
                    "area": int(mask.sum()), "segmentation": [polygon], "iscrowd": 0})
                closed = polygon + polygon[:2]  # Roboflow's YOLO polygons repeat their first point
                lines.append(f"{kind} " + " ".join(f"{v / IMAGE_SIZE:.6f}" for v in closed))
            (coco_root / split / name).write_bytes(data)
            (yolo_root / split / "images" / name).write_bytes(data)
            (yolo_root / split / "labels" / f"{name[:-4]}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
            index += 1
        (coco_root / split / "_annotations.coco.json").write_text(json.dumps(doc, separators=(",", ":")))
    yaml_text = "\n".join([
        "names:", *[f"- {name}" for name in CLASSES], f"nc: {len(CLASSES)}",
        "roboflow:", "  license: CC BY 4.0", f"  project: {PROJECT}", "  version: 1", "  workspace: sam3-lora-kit",
        "test: ../test/images", "train: ../train/images", "val: ../valid/images", ""])
    (yolo_root / "data.yaml").write_text(yaml_text)
    (out / "README.md").write_text(
        "# Sample data\n\nSynthetic shapes in Roboflow's export layouts, made by "
        "`python -m sam3_lora_kit.data.sample data/sample` (byte for byte; do not edit by hand).\n")
    return out


if __name__ == "__main__":
    target = make_sample_dataset(sys.argv[1] if len(sys.argv) > 1 else "data/sample")
    print(f"wrote {target}")
