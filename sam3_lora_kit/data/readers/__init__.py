"""One reader per Roboflow export format, and auto-detection of the format."""
from __future__ import annotations

from pathlib import Path

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.paths import SPLIT_NAMES, find_split_dir, glob_files
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import Reader

FORMATS = ("coco", "yolo", "voc", "masks")


def detect_format(root: Path) -> str:
    """Guess the export format of folder ``root`` from the files Roboflow puts in it."""
    split_dirs = [d for d in (find_split_dir(root, s) for s in SPLIT_NAMES) if d is not None]
    if (root / "data.yaml").is_file() or (root / "data.yml").is_file():
        return "yolo"
    for folder in split_dirs:
        if (folder / "_annotations.coco.json").is_file():
            return "coco"
    for folder in split_dirs:
        if (folder / "labels").is_dir():
            return "yolo"
        if (folder / "_classes.csv").is_file():
            return "masks"
        if glob_files(folder, "*.xml"):
            return "voc"
    if not split_dirs:
        raise DataError(root, "no train/, valid/ or test/ folder: not a Roboflow export")
    if not any(p.is_file() for folder in split_dirs for p in folder.rglob("*")):
        raise DataError(root, "empty export: its split folders hold no files")
    raise DataError(root, "cannot tell the export format (expected _annotations.coco.json, data.yaml, "
                          "*.xml or _classes.csv)")


def make_reader(root: Path, format: str, quirks: QuirkLog) -> Reader:
    """The reader for ``format`` (``auto`` detects it) over export folder ``root``."""
    if format == "auto":
        format = detect_format(root)
    if format == "coco":
        from sam3_lora_kit.data.readers.coco import CocoReader
        return CocoReader(root, quirks)
    if format == "yolo":
        from sam3_lora_kit.data.readers.yolo import YoloReader
        return YoloReader(root, quirks)
    if format == "voc":
        from sam3_lora_kit.data.readers.voc import VocReader
        return VocReader(root, quirks)
    if format == "masks":
        from sam3_lora_kit.data.readers.masks import MaskReader
        return MaskReader(root, quirks)
    raise DataError(root, f"unknown format {format!r} (choose auto, {', '.join(FORMATS)})")
