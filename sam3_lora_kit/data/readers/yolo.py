"""YOLO detection and segmentation exports (v5 to v11): ``data.yaml`` plus ``<split>/images`` and ``<split>/labels``.

A label line is ``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 ...`` (a polygon), all
normalised to 0..1; one file may mix both kinds.
"""
from __future__ import annotations


import numpy as np
from pathlib import Path
from typing import Iterator

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.images import read_image
from sam3_lora_kit.data.paths import SPLIT_NAMES, check_disk_name, find_split_dir, glob_files, is_inside, list_images
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import RawAnnotation, RawImage

YAML_KEYS = {"train": ("train",), "valid": ("val", "valid"), "test": ("test",)}
TOLERANCE = 0.01  # normalised coordinates this far outside 0..1 are clipped; further out is an error


def labels_dir_for(images_dir: Path, root: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path (below ``root``) becomes ``labels``.

    ``train/images`` -> ``train/labels`` (Roboflow), ``images/train`` -> ``labels/train`` (Ultralytics).
    A path without an ``images`` folder keeps its labels next to it, in ``<parent>/labels``.
    """
    parts = images_dir.parts
    for index in range(len(parts) - 1, len(root.parts) - 1, -1):
        if parts[index] == "images":
            return Path(*parts[:index], "labels", *parts[index + 1:])
    return images_dir.parent / "labels"


def read_data_yaml(path: Path) -> dict:
    """Parse ``data.yaml`` safely (no Python objects) into a mapping."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise DataError(path, f"not valid YAML{at} ({getattr(error, 'problem', None) or error})") from None
    if not isinstance(doc, dict):
        raise DataError(path, f"must be a YAML mapping, got {type(doc).__name__}")
    return doc


def class_names(doc: dict, path: Path, quirks: QuirkLog) -> list[str]:
    """``names`` as a list (a list, or a mapping from 0..K-1 to names)."""
    names = doc.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(path, "'names' mapping must have integer keys") from None
        if keys != list(range(len(keys))):
            raise DataError(path, f"'names' mapping keys must be 0..{len(keys) - 1}, got {keys}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise DataError(path, "no class 'names' (expected a list or a mapping)")
    for index, name in enumerate(names):
        if isinstance(name, bool) or not isinstance(name, (str, int, float)) or not str(name).strip():
            raise DataError(path, f"class {index} in 'names' must be a non-empty name, got {name!r}")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise DataError(path, "duplicate class names in 'names'")
    nc = doc.get("nc")
    if nc is not None and nc != len(names):
        quirks.add("names_count_mismatch", f"{path}: nc={nc}, {len(names)} names")
    return names


def parse_label_line(line: str, number: int, names: list[str], width: int, height: int,
                     where: Path, quirks: QuirkLog) -> RawAnnotation:
    """One label line -> a box or polygon annotation in pixels."""
    at = f"{where}:{number}"
    values = line.split()
    if len(values) < 5:
        raise DataError(at, f"YOLO line has {len(values)} values, expected at least 5 (class cx cy w h)")
    try:
        cls = int(values[0])
    except ValueError:
        raise DataError(at, f"class id {values[0]!r} is not an integer") from None
    if not 0 <= cls < len(names):
        raise DataError(at, f"unknown class id {cls} (data.yaml names {len(names)} classes)")
    try:
        coords = np.array(list(map(float, values[1:])))  # (2P,) or (4,), parsed by float() itself
    except ValueError:
        raise DataError(at, "coordinates must be numbers") from None
    if not np.isfinite(coords).all():
        raise DataError(at, "coordinates must be finite")
    if ((coords < -TOLERANCE) | (coords > 1 + TOLERANCE)).any():
        raise DataError(at, "coordinates outside 0..1 (YOLO coordinates are normalised)")
    if len(coords) == 4:
        cx, cy, w, h = coords.tolist()
        if w < 0 or h < 0:
            raise DataError(at, "box has a negative size")
        x0, y0 = (cx - w / 2) * width, (cy - h / 2) * height
        return RawAnnotation(names[cls], None, (x0, y0, w * width, h * height), at)
    if len(coords) % 2:
        raise DataError(at, f"polygon has an odd number of coordinates ({len(coords)})")
    pixels = coords  # (2P,) float64: the same products as v * width, v * height one by one
    pixels[0::2] *= width
    pixels[1::2] *= height
    return RawAnnotation(names[cls], [pixels], None, at)


class YoloReader:
    """Reads YOLO exports; split folders come from the convention, ``data.yaml`` paths when they exist."""

    format = "yolo"

    def __init__(self, root: Path, quirks: QuirkLog) -> None:
        self.root, self.quirks = root, quirks
        yaml_path = root / "data.yaml" if (root / "data.yaml").is_file() else root / "data.yml"
        if not yaml_path.is_file():
            raise DataError(root / "data.yaml", "missing (a YOLO export needs data.yaml with the class names)")
        self.yaml_path = yaml_path
        self.doc = read_data_yaml(yaml_path)
        self.names = class_names(self.doc, yaml_path, quirks)
        self._images = {s: d for s in SPLIT_NAMES if (d := self._images_dir(s)) is not None}

    def _images_dir(self, split: str) -> Path | None:
        conventional = find_split_dir(self.root, split)
        for key in YAML_KEYS[split]:
            value = self.doc.get(key)
            if not isinstance(value, str):
                continue
            for candidate in (self.root / value, self.root / value.lstrip("./").replace("../", "", 1)):
                if candidate.is_dir() and is_inside(candidate, self.root) and candidate != self.root:
                    return candidate
            if conventional is not None:
                self.quirks.add("yaml_path_ignored", f"{self.yaml_path}: {key}: {value}")
        if conventional is None:
            return None
        return conventional / "images" if (conventional / "images").is_dir() else None

    def splits(self) -> list[str]:
        return list(self._images)

    def categories(self) -> list[str]:
        return list(self.names)

    def iter_images(self, split: str) -> Iterator[RawImage]:
        images_dir = self._images[split]
        labels_dir = labels_dir_for(images_dir, self.root)
        images = list_images(images_dir)
        stems = {p.stem for p in images}
        if labels_dir.is_dir():
            for label in glob_files(labels_dir, "*.txt"):  # one folder: by name
                if label.stem not in stems:
                    self.quirks.add("orphan_label", str(label))
        elif images:
            self.quirks.add("missing_labels", f"{labels_dir} (for {len(images)} images in {images_dir})")
        for path in images:
            label = labels_dir / f"{path.stem}.txt"
            record = RawImage(file_name=check_disk_name(path), path=path, where=str(label), declares_size=False)
            if label.is_file():
                record.checked = read_image(path)  # read once: the size here, decode check and bytes for the copy
                width, height = record.checked.width, record.checked.height
                text = _read_text(label)
                lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
                if not lines:
                    self.quirks.add("empty_label_file", str(label))
                kinds = set()
                for number, line in lines:
                    ann = parse_label_line(line, number, self.names, width, height, label, self.quirks)
                    kinds.add(ann.segmentation is None)
                    record.annotations.append(ann)
                if len(kinds) == 2:
                    self.quirks.add("mixed_lines", str(label))
            yield record


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason})") from None
