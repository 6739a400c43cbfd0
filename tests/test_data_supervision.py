"""Agreement with supervision: same images, same counts, boxes IoU >= 0.99 (YOLO and Pascal VOC)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from data_fixtures import write_voc_export, write_yolo_export
from sam3_lora_kit.data import convert_roboflow

sv = pytest.importorskip("supervision")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) xyxy -> (N, M) IoU."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def kit_boxes(out: Path, split: str) -> dict[str, np.ndarray]:
    """file name -> (N, 4) xyxy boxes from the kit's COCO output."""
    doc = json.loads((out / split / "_annotations.coco.json").read_text())
    boxes = {i["file_name"]: [] for i in doc["images"]}
    names = {i["id"]: i["file_name"] for i in doc["images"]}
    for ann in doc["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[names[ann["image_id"]]].append([x, y, x + w, y + h])
    return {k: np.array(v, dtype=float).reshape(-1, 4) for k, v in boxes.items()}


def agreement(dataset, kit: dict[str, np.ndarray]) -> list[float]:
    """Best-match IoU of every supervision box with the kit's boxes (supervision boxes clipped to the image)."""
    ious = []
    sv_images = {Path(path).name: path for path in dataset.image_paths}
    assert sorted(sv_images) == sorted(kit)
    for name, path in sv_images.items():
        from PIL import Image

        detections = dataset.annotations[path]
        with Image.open(path) as image:
            width, height = image.size
        theirs = np.clip(detections.xyxy.astype(float), 0, [width, height, width, height])
        assert len(theirs) == len(kit[name]), name
        if len(theirs):
            ious.extend(box_iou(theirs, kit[name]).max(axis=1).tolist())
    return ious


def test_yolo_agrees_with_supervision(tmp_path):
    src = write_yolo_export(tmp_path / "export")
    convert_roboflow(src, tmp_path / "out")
    ious = []
    for split in ("train", "valid", "test"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = sv.DetectionDataset.from_yolo(str(src / split / "images"), str(src / split / "labels"),
                                                    str(src / "data.yaml"))
        ious += agreement(dataset, kit_boxes(tmp_path / "out", split))
    assert len(ious) == 6 and min(ious) >= 0.99


def test_voc_agrees_with_supervision(tmp_path):
    src = write_voc_export(tmp_path / "export")
    convert_roboflow(src, tmp_path / "out")
    ious = []
    for split in ("train", "valid", "test"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = sv.DetectionDataset.from_pascal_voc(str(src / split), str(src / split))
        ious += agreement(dataset, kit_boxes(tmp_path / "out", split))
    assert len(ious) == 6 and min(ious) >= 0.99
