"""Small Roboflow-style exports written by the tests themselves, each with the quirks real exports have.

Every writer returns the export folder. Images are tiny solid-colour files so tests stay fast.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int = 64, height: int = 48, value: int = 0) -> Path:
    """A small deterministic JPEG (or PNG, by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def coco_doc(images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> dict:
    """A Roboflow COCO document, with the phantom category id 0 unless categories are given."""
    if categories is None:
        categories = [{"id": 0, "name": "my-projct", "supercategory": "none"},
                      {"id": 1, "name": "cat", "supercategory": "my-projct"},
                      {"id": 2, "name": "dog", "supercategory": "my-projct"}]
    return {"info": {"description": "Exported from roboflow.com"}, "licenses": [], "categories": categories,
            "images": images, "annotations": annotations}


def write_coco_export(root: Path) -> Path:
    """COCO Segmentation export with no valid/ split and the quirks of real exports.

    train: a.jpg (JSON says 64x48, file is 64x47), b.jpg (no annotations), "-c.jpg" (name starts
    with '-'), missing.jpg (listed, not on disk). Annotations: a normal polygon, a polygon a few
    pixels outside the image, a 2-point polygon, an empty segmentation with a real bbox, an RLE on
    iscrowd=0, an iscrowd=1 RLE. test: one image whose only class (dog) appears only there.
    """
    from pycocotools import mask as mask_utils

    train = root / "train"
    write_image(train / "a.jpg", 64, 47, 1)
    write_image(train / "b.jpg", 64, 48, 2)
    write_image(train / "-c.jpg", 32, 32, 3)
    m = np.zeros((32, 32), dtype=np.uint8, order="F")
    m[4:12, 6:20] = 1
    rle = mask_utils.encode(m)
    uncompressed = {"size": [32, 32], "counts": _uncompressed_counts(m)}
    images = [{"id": 0, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 1, "file_name": "b.jpg", "width": 64, "height": 48},
              {"id": 2, "file_name": "-c.jpg", "width": 32, "height": 32},
              {"id": 3, "file_name": "missing.jpg", "width": 64, "height": 48}]
    annotations = [
        {"id": 0, "image_id": 0, "category_id": 1, "bbox": [10, 10, 20, 10], "area": 200,
         "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]], "iscrowd": 0},
        {"id": 1, "image_id": 0, "category_id": 1, "bbox": [50, 30, 14, 17], "area": 1,
         "segmentation": [[50, 30, 67, 30, 67, 50, 50, 50]], "iscrowd": 0},
        {"id": 2, "image_id": 0, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 1,
         "segmentation": [[1, 1, 3, 3]], "iscrowd": 0},
        {"id": 3, "image_id": 0, "category_id": 1, "bbox": [2, 30, 6, 8], "area": 48,
         "segmentation": [], "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [6, 4, 14, 8], "area": 112,
         "segmentation": {"size": [32, 32], "counts": rle["counts"].decode("ascii")}, "iscrowd": 0},
        {"id": 5, "image_id": 2, "category_id": 1, "bbox": [6, 4, 14, 8], "area": 112,
         "segmentation": uncompressed, "iscrowd": 1},
    ]
    (train / "_annotations.coco.json").write_text(json.dumps(coco_doc(images, annotations)))
    test = root / "test"
    write_image(test / "t.jpg", 40, 40, 4)
    (test / "_annotations.coco.json").write_text(json.dumps(coco_doc(
        [{"id": 0, "file_name": "t.jpg", "width": 40, "height": 40}],
        [{"id": 0, "image_id": 0, "category_id": 2, "bbox": [5, 5, 10, 10], "area": 100,
          "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]], "iscrowd": 0}])))
    return root


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with zeros (COCO's uncompressed RLE)."""
    flat = mask.reshape(-1, order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def write_yolo_export(root: Path, names_as_mapping: bool = False) -> Path:
    """YOLO export: absolute train/val paths from another machine, relative test path, mixed box and
    polygon lines, a polygon repeating its first point, an empty label file, an image without a label."""
    names = {0: "fish", 1: "shark"} if names_as_mapping else ["fish", "shark"]
    yaml_names = ("names:\n  0: fish\n  1: shark\n" if names_as_mapping else "names:\n- fish\n- shark\n")
    (root).mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(yaml_names + f"nc: {len(names)}\n"
                                    "train: /Users/someone/tmp/export/train/images\n"
                                    "val: /Users/someone/tmp/export/valid/images\ntest: ../test/images\n")
    labels = {
        "train": {"img1": "0 0.5 0.5 0.25 0.5\n1 0.1 0.1 0.4 0.1 0.4 0.3 0.1 0.3 0.1 0.1\n",
                  "img2": "1 0.25 0.25 0.5 0.5\n0 0.75 0.75 0.2 0.2\n",
                  "-img3": "", "img4": None},
        "valid": {"v1": "0 0.2 0.2 0.6 0.2 0.4 0.7\n"},
        "test": {"t1": "1 0.5 0.5 1.0 1.0\n"},
    }
    for split, files in labels.items():
        for index, (stem, text) in enumerate(files.items()):
            write_image(root / split / "images" / f"{stem}.jpg", 80, 60, index)
            if text is not None:
                (root / split / "labels").mkdir(parents=True, exist_ok=True)
                (root / split / "labels" / f"{stem}.txt").write_text(text)
    return root


VOC_TEMPLATE = """<annotation>
\t<folder></folder>
\t<filename>{filename}</filename>
\t<source><database>roboflow.com</database></source>
\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>
\t<segmented>0</segmented>
{objects}</annotation>
"""
VOC_OBJECT = """\t<object>
\t\t<name>{name}</name>
\t\t<pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult><occluded>0</occluded>
\t\t<bndbox><xmin>{xmin}</xmin><xmax>{xmax}</xmax><ymin>{ymin}</ymin><ymax>{ymax}</ymax></bndbox>
\t</object>
"""


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, int, int, int, int]]) -> str:
    """A Roboflow VOC file; boxes are (name, xmin, ymin, xmax, ymax), written xmin, xmax, ymin, ymax."""
    body = "".join(VOC_OBJECT.format(name=n, xmin=a, ymin=b, xmax=c, ymax=d) for n, a, b, c, d in objects)
    return VOC_TEMPLATE.format(filename=filename, width=width, height=height, objects=body)


def write_voc_export(root: Path) -> Path:
    """VOC export: bndbox children in the order xmin, xmax, ymin, ymax; class names with spaces; a
    class only in valid/; a box 1 px past the image edge; images of several sizes."""
    files = {
        "train": [("f1.jpg", 80, 60, [("VEHICLE TYPE 1", 5, 5, 40, 30), ("wheel", 50, 40, 81, 60)]),
                  ("f2.jpg", 100, 70, [("wheel", 10, 10, 30, 30)]),
                  ("f3.jpg", 64, 64, [])],
        "valid": [("v1.jpg", 90, 50, [("VEHICLE TYPE 2", 20, 10, 60, 45), ("wheel", 1, 1, 10, 10)])],
        "test": [("t1.jpg", 70, 70, [("VEHICLE TYPE 1", 3, 4, 50, 60)])],
    }
    for split, items in files.items():
        for index, (name, width, height, objects) in enumerate(items):
            write_image(root / split / name, width, height, index)
            (root / split / name).with_suffix(".xml").write_text(voc_xml(name, width, height, objects))
    return root


def write_masks_export(root: Path) -> Path:
    """Semantic mask export: _classes.csv with background 0, two blobs of one class, one of another."""
    for split in ("train", "valid"):
        folder = root / split
        write_image(folder / "m1.jpg", 40, 30, 1)
        mask = np.zeros((30, 40), dtype=np.uint8)
        mask[2:8, 2:10] = 1
        mask[15:25, 20:35] = 1
        mask[2:6, 30:38] = 2
        Image.fromarray(mask).save(folder / "m1_mask.png")
        (folder / "_classes.csv").write_text("Pixel Value, Class\n0, background\n1, crack\n2, rust\n")
    return root


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to check a source is unchanged)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fail_os_link(monkeypatch, code: int) -> list:
    """Make ``os.link`` fail with the errno ``code`` (e.g. EXDEV: another file system); returns
    the list its calls are recorded in."""
    calls = []

    def link(source, target, *args, **kwargs):
        calls.append(target)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", link)
    return calls
