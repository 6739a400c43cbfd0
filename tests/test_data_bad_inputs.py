"""Bad exports: each gives a one-line error naming the file and the problem; DST never appears; SRC unchanged."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import pytest

from data_fixtures import coco_doc, tree_bytes, voc_xml, write_coco_export, write_image, write_voc_export, \
    write_yolo_export
from sam3_lora_kit.data import DataError, convert_roboflow

GOOD_IMAGE = {"id": 0, "file_name": "a.jpg", "width": 64, "height": 48}
GOOD_ANN = {"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
            "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]], "iscrowd": 0}


def coco_with(root: Path, doc: object | None = None, raw: bytes | None = None, **changes) -> tuple[Path, str]:
    """A one-image COCO export whose JSON is ``raw``, ``doc``, or the good doc with ``changes``."""
    write_image(root / "train" / "a.jpg", 64, 48)
    path = root / "train" / "_annotations.coco.json"
    if raw is None:
        if doc is None:
            image, ann = {**GOOD_IMAGE, **changes.get("image", {})}, {**GOOD_ANN, **changes.get("ann", {})}
            doc = coco_doc([image] + changes.get("more_images", []), [ann] + changes.get("more_anns", []))
        raw = json.dumps(doc).encode()
    path.write_bytes(raw)
    return root, "_annotations.coco.json"


def yolo_with(root: Path, line: str = "0 0.5 0.5 0.2 0.2", yaml: str = "names: [fish]\n") -> tuple[Path, str]:
    write_image(root / "train" / "images" / "a.jpg", 64, 48)
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "a.txt").write_text(line + "\n")
    (root / "data.yaml").write_text(yaml)
    return root, "a.txt" if yaml == "names: [fish]\n" else "data.yaml"


def voc_with(root: Path, xml: str) -> tuple[Path, str]:
    write_image(root / "train" / "a.jpg", 64, 48)
    (root / "train" / "a.xml").write_text(xml)
    return root, "a.xml"


def bad_image(root: Path, data: bytes) -> tuple[Path, str]:
    coco_with(root)
    (root / "train" / "a.jpg").write_bytes(data)
    return root, "a.jpg"


def truncated_image(root: Path) -> tuple[Path, str]:
    coco_with(root)
    data = (root / "train" / "a.jpg").read_bytes()
    (root / "train" / "a.jpg").write_bytes(data[: len(data) // 2])
    return root, "a.jpg"


def link_outside(root: Path) -> tuple[Path, str]:
    coco_with(root)
    outside = write_image(root.parent / "secret.jpg", 64, 48)
    (root / "train" / "a.jpg").unlink()
    os.symlink(outside, root / "train" / "a.jpg")
    return root, "a.jpg"


def zip_slip(root: Path) -> tuple[Path, str]:
    coco_with(root)
    archive = root.parent / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in root.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
        zf.writestr("../../evil.txt", "gotcha")
    return archive, "export.zip"


def only_test(root: Path) -> tuple[Path, str]:
    coco_with(root)
    (root / "train").rename(root / "test")
    return root, "export"


def empty_export(root: Path) -> tuple[Path, str]:
    (root / "train").mkdir(parents=True)
    return root, "export"


VOC_OK = voc_xml("a.jpg", 64, 48, [("car", 2, 2, 10, 10)])
CASES: dict[str, tuple[Callable[[Path], tuple[Path, str]], str]] = {
    "truncated json": (lambda r: coco_with(r, raw=b'{"images": [{"id": 0,'), "not valid JSON"),
    "non-utf8 json": (lambda r: coco_with(r, raw=b'{"images": "\xff\xfe"}'), "not UTF-8"),
    "json top level list": (lambda r: coco_with(r, raw=b"[1, 2]"), "top level must be a JSON object"),
    "missing images": (lambda r: coco_with(r, doc={"annotations": [], "categories": []}), "missing 'images'"),
    "missing annotations": (lambda r: coco_with(r, doc={"images": [], "categories": []}),
                            "missing 'annotations'"),
    "missing categories": (lambda r: coco_with(r, doc={"images": [], "annotations": []}), "missing 'categories'"),
    "duplicate image id": (lambda r: coco_with(r, more_images=[{**GOOD_IMAGE, "file_name": "b.jpg"}]),
                           "duplicate image id 0"),
    "duplicate annotation id": (lambda r: coco_with(r, more_anns=[GOOD_ANN]), "duplicate annotation id 0"),
    "unknown image": (lambda r: coco_with(r, ann={"image_id": 7}), "unknown image id 7"),
    "unknown category": (lambda r: coco_with(r, ann={"category_id": 9}), "unknown category id 9"),
    "odd coordinates": (lambda r: coco_with(r, ann={"segmentation": [[1, 1, 6, 1, 6, 6, 1]]}), "odd number"),
    "nan coordinate": (lambda r: coco_with(r, ann={"segmentation": [[1, 1, float("nan"), 1, 6, 6]]}),
                       "not finite"),
    "infinite coordinate": (lambda r: coco_with(r, ann={"segmentation": [[1, 1, float("inf"), 1, 6, 6]]}),
                            "not finite"),
    "negative box": (lambda r: coco_with(r, ann={"segmentation": [], "bbox": [5, 5, -3, 4]}), "negative size"),
    "rle wrong size": (lambda r: coco_with(r, ann={"segmentation": {"size": [10, 10], "counts": [100]}}),
                       "does not match the image"),
    "empty image": (lambda r: bad_image(r, b""), "empty"),
    "not an image": (lambda r: bad_image(r, b"hello, I am text"), "not an image"),
    "truncated image": (truncated_image, "does not decode"),
    "dotdot file name": (lambda r: coco_with(r, image={"file_name": "../a.jpg"}), "escapes the export"),
    "absolute file name": (lambda r: coco_with(r, image={"file_name": "/etc/passwd"}), "absolute path"),
    "link outside": (link_outside, "pointing outside the export"),
    "zip slip": (zip_slip, "would land outside the target"),
    "yolo too few values": (lambda r: yolo_with(r, "0 0.5 0.5"), "expected at least 5"),
    "yolo unknown class": (lambda r: yolo_with(r, "3 0.5 0.5 0.2 0.2"), "unknown class id 3"),
    "yolo outside 0..1": (lambda r: yolo_with(r, "0 1.5 0.5 0.2 0.2"), "outside 0..1"),
    "yaml not yaml": (lambda r: yolo_with(r, yaml="names: [fish\n  : -\n"), "not valid YAML"),
    "yaml without names": (lambda r: yolo_with(r, yaml="nc: 1\n"), "no class 'names'"),
    "voc not xml": (lambda r: voc_with(r, "<annotation><size>"), "not valid XML"),
    "voc without size": (lambda r: voc_with(r, VOC_OK.replace("<size>", "<sizes>").replace("</size>", "</sizes>")),
                         "lacks <size>"),
    "voc entity": (lambda r: voc_with(r, '<!DOCTYPE a [<!ENTITY x "y">]>' + VOC_OK), "DOCTYPE"),
    "empty export": (empty_export, "empty export"),
    "only test split": (only_test, "no train/ split"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_refused_cleanly(tmp_path, case):
    build, problem = CASES[case]
    src, file_part = build(tmp_path / "export")
    before = tree_bytes(src) if src.is_dir() else src.read_bytes()
    with pytest.raises(DataError) as caught:
        convert_roboflow(src, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message
    assert file_part in message and problem in message, message
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp folder left
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    assert (tree_bytes(src) if src.is_dir() else src.read_bytes()) == before


def test_non_empty_dst_needs_overwrite(tmp_path):
    src = write_voc_export(tmp_path / "export")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty.*overwrite"):
        convert_roboflow(src, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["inside", "same"])
def test_dst_inside_src_refused(tmp_path, where):
    src = write_yolo_export(tmp_path / "export")
    before = tree_bytes(src)
    with pytest.raises(DataError, match="inside the source"):
        convert_roboflow(src, src / "out" if where == "inside" else src, overwrite=True)
    assert tree_bytes(src) == before


def test_cli_error_is_one_line_without_traceback(tmp_path, capsys):
    from sam3_lora_kit.cli import main

    src, _ = coco_with(tmp_path / "export", raw=b"{broken")
    assert main(["convert", str(src), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "_annotations.coco.json: not valid JSON" in err
    with pytest.raises(DataError):  # --debug lets the traceback through
        main(["--debug", "convert", str(src), str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_missing_image_is_reported_not_fatal(tmp_path):
    src = write_coco_export(tmp_path / "export")
    report = convert_roboflow(src, tmp_path / "out")
    assert report.quirk_counts()["missing_image"] == 1
