"""Readers and zip extraction on exports from real machines: Info-ZIP names, Ultralytics layout,
encrypted or Deflate64 zips, unused bad boxes, VOC without <size>, macOS ``._`` files, odd names."""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

from data_fixtures import coco_doc, voc_xml, write_coco_export, write_image, write_voc_export, write_yolo_export
from sam3_lora_kit.data import DataError, convert_roboflow

APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 60
SQUARE = [[10, 10, 30, 10, 30, 20, 10, 20]]


def _patch_zip(archive: Path, clear_flags: int = 0, set_flags: int = 0, method: int | None = None) -> None:
    """Rewrite the flags (and compression method) of every local and central header of a stored zip."""
    raw = bytearray(archive.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = raw.find(signature)
        while start >= 0:
            flags, = struct.unpack_from("<H", raw, start + flags_at)
            struct.pack_into("<H", raw, start + flags_at, (flags & ~clear_flags) | set_flags)
            if method is not None:
                struct.pack_into("<H", raw, start + flags_at + 2, method)
            start = raw.find(signature, start + 4)
    archive.write_bytes(bytes(raw))


def _zip(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


def _coco_export(root: Path, names: list[str], bbox: object = (10, 10, 20, 10)) -> Path:
    images = [{"id": i, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)]
    for name in names:
        write_image(root / "train" / name)
    annotations = [{"id": 0, "image_id": 0, "category_id": 1, "bbox": bbox, "segmentation": SQUARE, "iscrowd": 0}]
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(coco_doc(images, annotations)))
    return root


def _output(dst: Path, split: str = "train") -> dict:
    return json.loads((dst / split / "_annotations.coco.json").read_text())


# 1. Info-ZIP / macOS zips: UTF-8 names without the UTF-8 flag

def test_utf8_names_without_the_zip_flag_are_read_as_utf8(tmp_path):
    archive = _zip(_coco_export(tmp_path / "export", ["café.jpg", "b.jpg"]), tmp_path / "infozip.zip")
    _patch_zip(archive, clear_flags=0x800)
    with zipfile.ZipFile(archive) as zf:  # what Python sees: cp437 mojibake
        assert "train/caf├⌐.jpg" in zf.namelist()
    report = convert_roboflow(archive, tmp_path / "out")
    assert report.quirk_counts().get("missing_image", 0) == 0
    assert sorted(i["file_name"] for i in _output(tmp_path / "out")["images"]) == ["b.jpg", "café.jpg"]
    assert report.total("instances_out") == 1


def test_cp437_names_that_are_not_utf8_are_kept(tmp_path):
    from sam3_lora_kit.data.paths import safe_extract_zip

    archive = tmp_path / "dos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "x")
    raw = archive.read_bytes().replace(b"a.txt", b"\x82.txt")  # cp437 'é', not valid UTF-8
    archive.write_bytes(raw)
    safe_extract_zip(archive, tmp_path / "target")
    assert [p.name for p in (tmp_path / "target").iterdir()] == ["é.txt"]


# 3. Encrypted and Deflate64 members

@pytest.mark.parametrize("how", ["encrypted", "deflate64"])
def test_unsupported_zip_members_name_the_zip_and_the_member(tmp_path, how):
    archive = _zip(write_voc_export(tmp_path / "export"), tmp_path / f"{how}.zip")
    _patch_zip(archive, set_flags=0x1) if how == "encrypted" else _patch_zip(archive, method=9)
    with pytest.raises(DataError) as caught:
        convert_roboflow(archive, tmp_path / "out")
    assert caught.value.path == str(archive)
    assert "'test/t1.jpg'" in caught.value.problem
    assert ("encrypted" if how == "encrypted" else "cannot be extracted") in caught.value.problem
    assert not (tmp_path / "out").exists()


# 2. YOLO labels next to the images in the Ultralytics layout

def test_ultralytics_layout_finds_labels_in_labels_split(tmp_path):
    root = tmp_path / "export"
    root.mkdir()
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cat]\n")
    for split in ("train", "val"):
        write_image(root / "images" / split / "a.jpg", 80, 60)
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    report = convert_roboflow(root, tmp_path / "out")
    assert report.splits["train"].instances_out == report.splits["valid"].instances_out == 1
    assert "missing_labels" not in report.quirk_counts()


def test_labels_dir_rule():
    from sam3_lora_kit.data.readers.yolo import labels_dir_for

    root = Path("/data/images/export")  # an "images" folder above the export is not the one replaced
    assert labels_dir_for(root / "train" / "images", root) == root / "train" / "labels"
    assert labels_dir_for(root / "images" / "train", root) == root / "labels" / "train"
    assert labels_dir_for(root / "images" / "x" / "images" / "t", root) == root / "images" / "x" / "labels" / "t"
    assert labels_dir_for(root / "train", root) == root / "labels"


def test_split_without_labels_folder_is_reported_not_silent(tmp_path):
    import shutil

    src = write_yolo_export(tmp_path / "export")
    shutil.rmtree(src / "valid" / "labels")
    report = convert_roboflow(src, tmp_path / "out")
    quirk = next(q for q in report.quirks if q.code == "missing_labels")
    assert quirk.severity != "info" and quirk.count == 1
    assert "valid" in quirk.examples[0]


# 4. A bad bbox that is never used

@pytest.mark.parametrize("bbox", [[10, 10, -20, 10], "1,2,3,4", [float("nan")] * 4])
def test_bad_bbox_next_to_a_segmentation_is_ignored(tmp_path, bbox):
    src = _coco_export(tmp_path / "export", ["a.jpg"], bbox=bbox)
    report = convert_roboflow(src, tmp_path / "out")
    assert report.total("instances_out") == 1
    assert _output(tmp_path / "out")["annotations"][0]["bbox"] == [10, 10, 20, 10]


def test_bad_bbox_without_segmentation_still_fails(tmp_path):
    src = _coco_export(tmp_path / "export", ["a.jpg"], bbox=[10, 10, -20, 10])
    doc = json.loads((src / "train" / "_annotations.coco.json").read_text())
    doc["annotations"][0]["segmentation"] = []
    (src / "train" / "_annotations.coco.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="negative size"):
        convert_roboflow(src, tmp_path / "out")


# 5. VOC without <size>

@pytest.mark.parametrize("cut", ["<size><width>80</width><height>60</height><depth>3</depth></size>",
                                 "<width>80</width><height>60</height>", "<height>60</height>"])
def test_voc_without_size_reads_it_from_the_image(tmp_path, cut):
    root = tmp_path / "export"
    write_image(root / "train" / "a.jpg", 80, 60)
    xml = voc_xml("a.jpg", 80, 60, [("car", 5, 5, 40, 30)])
    assert cut in xml
    (root / "train" / "a.xml").write_text(xml.replace(cut, ""))
    report = convert_roboflow(root, tmp_path / "out")
    assert report.quirk_counts()["missing_size"] == 1
    image = _output(tmp_path / "out")["images"][0]
    assert (image["width"], image["height"], report.total("instances_out")) == (80, 60, 1)


def test_voc_non_numeric_size_still_fails(tmp_path):
    root = tmp_path / "export"
    write_image(root / "train" / "a.jpg", 80, 60)
    (root / "train" / "a.xml").write_text(voc_xml("a.jpg", "wide", 60, [("car", 5, 5, 40, 30)]))
    with pytest.raises(DataError, match="not a number"):
        convert_roboflow(root, tmp_path / "out")


# 6. macOS AppleDouble files

def test_apple_double_files_are_skipped_in_yolo(tmp_path):
    src = write_yolo_export(tmp_path / "export")
    expected = convert_roboflow(src, tmp_path / "plain")
    (src / "train" / "images" / "._img1.jpg").write_bytes(APPLE_DOUBLE)
    (src / "train" / "labels" / "._img1.txt").write_bytes(APPLE_DOUBLE)
    report = convert_roboflow(src, tmp_path / "out")
    assert report.quirk_counts() == expected.quirk_counts()
    assert report.total("images_out") == expected.total("images_out")


def test_apple_double_files_are_skipped_in_voc_and_masks(tmp_path):
    from data_fixtures import write_masks_export

    for name, writer in (("voc", write_voc_export), ("masks", write_masks_export)):
        src = writer(tmp_path / name)
        expected = convert_roboflow(src, tmp_path / f"{name}_plain")
        for extra in ("._f1.jpg", "._f1.xml", "._m1.jpg", "._m1_mask.png"):
            (src / "train" / extra).write_bytes(APPLE_DOUBLE)
        report = convert_roboflow(src, tmp_path / f"{name}_out")
        assert report.quirk_counts() == expected.quirk_counts(), name
        assert report.total("images_out") == expected.total("images_out") > 0, name


# 7. File names a COCO file cannot hold

@pytest.mark.parametrize("stem", ["a\\b", "c:x"])
def test_yolo_image_name_with_backslash_or_drive_fails_at_conversion(tmp_path, stem):
    src = write_yolo_export(tmp_path / "export")
    write_image(src / "train" / "images" / f"{stem}.jpg", 80, 60)
    with pytest.raises(DataError, match="rename the file") as caught:
        convert_roboflow(src, tmp_path / "out")
    assert caught.value.path.endswith(f"{stem}.jpg")
    assert not (tmp_path / "out").exists()


def test_voc_image_found_by_stem_with_backslash_fails_at_conversion(tmp_path):
    root = tmp_path / "export"
    write_image(root / "train" / "a\\b.jpg", 80, 60)
    (root / "train" / "a\\b.xml").write_text(voc_xml("", 80, 60, [("car", 5, 5, 40, 30)]))
    with pytest.raises(DataError, match="rename the file"):
        convert_roboflow(root, tmp_path / "out")


def test_coco_export_still_converts(tmp_path):
    report = convert_roboflow(write_coco_export(tmp_path / "export"), tmp_path / "out")
    assert report.total("instances_out") > 0
