"""The converter on small exports of each format: counts, quirks, clean categories, valid COCO."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from data_fixtures import (fail_os_link, tree_bytes, write_coco_export, write_image, write_masks_export,
                           write_voc_export, write_yolo_export)
from sam3_lora_kit.data import DataError, convert_roboflow
from sam3_lora_kit.data.readers import detect_format

WRITERS = {"coco": write_coco_export, "yolo": write_yolo_export, "voc": write_voc_export,
           "masks": write_masks_export}
# format -> (categories out, {split: (images in, images out, instances in, instances out)}, quirks expected)
EXPECTED = {
    "coco": (["cat", "dog"], {"train": (4, 3, 6, 5), "test": (1, 1, 1, 1)},
             {"phantom_category", "size_mismatch", "clipped", "short_polygon", "box_as_mask", "rle_non_crowd",
              "missing_image", "negative_image", "class_in_one_split", "missing_split"}),
    "yolo": (["fish", "shark"], {"train": (4, 4, 4, 4), "valid": (1, 1, 1, 1), "test": (1, 1, 1, 1)},
             {"yaml_path_ignored", "mixed_lines", "closing_point", "empty_label_file", "negative_image",
              "box_as_mask"}),
    "voc": (["VEHICLE TYPE 1", "VEHICLE TYPE 2", "wheel"], {"train": (3, 3, 3, 3), "valid": (1, 1, 2, 2),
                                                              "test": (1, 1, 1, 1)},
            {"clipped", "box_as_mask", "negative_image", "class_in_one_split", "poor_prompt_name"}),
    "masks": (["crack", "rust"], {"train": (1, 1, 3, 3), "valid": (1, 1, 3, 3)},
              {"background_class", "missing_split"}),
}


@pytest.fixture(params=sorted(WRITERS))
def converted(request, tmp_path):
    fmt = request.param
    src = WRITERS[fmt](tmp_path / "export")
    before = tree_bytes(src)
    report = convert_roboflow(src, tmp_path / "out")
    return fmt, src, before, report, tmp_path / "out"


def load_coco(path: Path) -> COCO:
    return COCO(str(path))


def test_detects_format(converted):
    fmt, src, *_ = converted
    assert detect_format(src) == fmt


def test_counts_categories_and_quirks(converted):
    fmt, _, _, report, _ = converted
    categories, splits, quirks = EXPECTED[fmt]
    assert report.format == fmt
    assert report.categories == categories
    got = {s: (st.images_in, st.images_out, st.instances_in, st.instances_out) for s, st in report.splits.items()}
    assert got == splits
    assert quirks <= set(report.quirk_counts()), set(report.quirk_counts())


def test_output_is_valid_coco(converted):
    fmt, _, _, report, out = converted
    for split, stats in report.splits.items():
        path = out / split / "_annotations.coco.json"
        coco = load_coco(path)
        assert sorted(coco.getCatIds()) == list(range(1, len(report.categories) + 1))
        assert [coco.cats[k]["name"] for k in sorted(coco.cats)] == report.categories
        assert len(coco.getImgIds()) == stats.images_out
        assert len(coco.getAnnIds()) == stats.instances_out
        for image in coco.imgs.values():
            from PIL import Image
            with Image.open(out / split / image["file_name"]) as im:
                assert im.size == (image["width"], image["height"])
        for ann in coco.anns.values():
            mask = coco.annToMask(ann)  # decodes with pycocotools.mask
            image = coco.imgs[ann["image_id"]]
            assert mask.shape == (image["height"], image["width"])
            assert ann["area"] == int(mask.sum()) > 0
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert 0 <= x <= xs.min() + 1 and 0 <= y <= ys.min() + 1
            assert xs.max() <= x + w + 1 <= image["width"] + 1 and ys.max() <= y + h + 1 <= image["height"] + 1


def test_source_untouched_and_no_leftovers(converted):
    _, src, before, _, out = converted
    assert tree_bytes(src) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["export", "out"]  # no temporary folder left


def test_coco_quirk_details(tmp_path):
    src = write_coco_export(tmp_path / "export")
    report = convert_roboflow(src, tmp_path / "out")
    doc = json.loads((tmp_path / "out/train/_annotations.coco.json").read_text())
    names = [i["file_name"] for i in doc["images"]]
    assert names == ["a.jpg", "b.jpg", "-c.jpg"]  # missing.jpg never invented; negative b.jpg kept
    assert not (tmp_path / "out/train/missing.jpg").exists()
    a = doc["images"][0]
    assert (a["width"], a["height"]) == (64, 47)  # corrected from the file
    clipped = doc["annotations"][1]["segmentation"][0]
    assert max(clipped[0::2]) == 64 and max(clipped[1::2]) == 47
    assert [a["iscrowd"] for a in doc["annotations"]] == [0, 0, 0, 0, 1]
    rle = doc["annotations"][3]["segmentation"]
    assert isinstance(rle, dict) and mask_utils.area({**rle, "counts": rle["counts"].encode()}) == 112
    box_mask = doc["annotations"][2]
    assert box_mask["bbox"] == [2, 30, 6, 8]  # empty segmentation: the box became the mask
    assert report.quirk_counts()["short_polygon"] == 1


@pytest.mark.parametrize("mapping", [False, True])
def test_yolo_names_list_or_mapping(tmp_path, mapping):
    src = write_yolo_export(tmp_path / "export", names_as_mapping=mapping)
    report = convert_roboflow(src, tmp_path / "out")
    assert report.categories == ["fish", "shark"]
    doc = json.loads((tmp_path / "out/train/_annotations.coco.json").read_text())
    image_id = next(i["id"] for i in doc["images"] if i["file_name"] == "img1.jpg")
    img1 = [a for a in doc["annotations"] if a["image_id"] == image_id]
    assert [a["category_id"] for a in img1] == [1, 2]
    assert img1[0]["bbox"] == pytest.approx([30, 15, 20, 30])  # 0.5 0.5 0.25 0.5 on 80x60
    assert len(img1[1]["segmentation"][0]) == 8  # closing point removed


def test_masks_instances_are_components(tmp_path):
    src = write_masks_export(tmp_path / "export")
    convert_roboflow(src, tmp_path / "out")
    coco = load_coco(tmp_path / "out/train/_annotations.coco.json")
    areas = sorted((coco.cats[a["category_id"]]["name"], a["area"]) for a in coco.anns.values())
    assert areas == [("crack", 48), ("crack", 150), ("rust", 32)]


@pytest.mark.parametrize("link", [False, True])
def test_names_that_differ_only_in_case_are_renamed(tmp_path, link):
    """On macOS or Windows, img1.jpg and IMG1.jpg would be one file: the output keeps both images."""
    src = write_yolo_export(tmp_path / "export")
    extra = {"IMG1": "0 0.5 0.5 0.2 0.2\n", "Img1": "1 0.5 0.5 0.4 0.4\n0 0.2 0.2 0.1 0.1\n", "img1-2": ""}
    for index, (stem, text) in enumerate(extra.items(), 10):
        write_image(src / "train/images" / f"{stem}.jpg", 80, 60, index)
        (src / "train/labels" / f"{stem}.txt").write_text(text)
    report = convert_roboflow(src, tmp_path / "out", link=link)
    coco = json.loads((tmp_path / "out/train/_annotations.coco.json").read_text())
    names = [image["file_name"] for image in coco["images"]]
    assert len({name.casefold() for name in names}) == len(names) == 7
    renamed = set(names) - {path.name for path in (src / "train/images").iterdir()}
    assert len(renamed) >= 2 and report.quirk_counts()["case_only_name"] == len(renamed)
    export_names = {image["file_name"]: image.get("extra", {}).get("name") for image in coco["images"]}
    for name, export_name in export_names.items():
        assert (export_name is not None) == (name in renamed)
        if export_name is not None:  # the export's file with that name holds the bytes written under the new one
            assert (src / "train/images" / export_name).read_bytes() == (tmp_path / "out/train" / name).read_bytes()
    sources = {(src / "train/images" / f"{stem}.jpg").read_bytes(): stem for stem in ["img1", *extra]}
    boxes_per_image = {image["id"]: 0 for image in coco["images"]}
    for ann in coco["annotations"]:
        boxes_per_image[ann["image_id"]] += 1
    written = {sources.get((tmp_path / "out/train" / image["file_name"]).read_bytes()): boxes_per_image[image["id"]]
               for image in coco["images"]}
    assert {stem: written[stem] for stem in ["img1", *extra]} == {"img1": 2, "IMG1": 1, "Img1": 2, "img1-2": 0}


def test_case_only_renames_never_reuse_a_name_in_any_order():
    import unicodedata

    from sam3_lora_kit.data.pipeline import SplitTracker
    from sam3_lora_kit.data.quirks import QuirkLog

    tracker, quirks = SplitTracker(), QuirkLog()
    cafe_nfc, cafe_nfd = (unicodedata.normalize(form, "caf\u00e9.jpg") for form in ("NFC", "NFD"))
    names = ["IMG1.jpg", "img1.jpg", "img1-2.jpg", "sub/A.png", "sub/a.png", "noext", "NOEXT", ".jpg", ".JPG",
             cafe_nfc, cafe_nfd]
    written = [tracker.portable_name("train", name, quirks) for name in names]
    assert written == ["IMG1.jpg", "img1-2.jpg", "img1-2-2.jpg", "sub/A.png", "sub/a-2.png", "noext", "NOEXT-2",
                       ".jpg", "_2.JPG", cafe_nfc, unicodedata.normalize("NFD", "caf\u00e9-2.jpg")]
    assert quirks.quirks["case_only_name"].count == 6
    assert any("an earlier rename took img1-2.jpg" in example for example in quirks.quirks["case_only_name"].examples)
    # an exact repeat gets its first occurrence's name, so the writer refuses it
    assert [tracker.portable_name("train", name, quirks) for name in ("IMG1.jpg", "img1.jpg")] == ["IMG1.jpg", "img1-2.jpg"]
    assert quirks.quirks["case_only_name"].count == 6
    assert tracker.portable_name("valid", "img1.jpg", quirks) == "img1.jpg"  # another split, another folder


def test_an_exact_repeat_of_a_renamed_name_is_still_refused(tmp_path):
    src = write_coco_export(tmp_path / "export")
    doc_path = src / "train" / "_annotations.coco.json"
    doc = json.loads(doc_path.read_text())
    first = doc["images"][0]
    write_image(src / "train" / first["file_name"].upper(), first["width"], first["height"], 7)
    for image_id in (901, 902):
        doc["images"].append({**first, "id": image_id, "file_name": first["file_name"].upper()})
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="appears twice in one split"):
        convert_roboflow(src, tmp_path / "out")


def test_link_makes_hard_links(tmp_path):
    src = write_voc_export(tmp_path / "export")
    convert_roboflow(src, tmp_path / "out", link=True)
    image = tmp_path / "out/train/f1.jpg"
    assert not image.is_symlink() and os.path.samefile(image, src / "train/f1.jpg")
    assert (src / "train/f1.jpg").stat().st_nlink == 2


@pytest.mark.parametrize("code, tried_per", [("EXDEV", "split"), ("ENOTSUP", "split"), ("EPERM", "image"), ("EMLINK", "image")])
def test_link_falls_back_to_symlinks(tmp_path, monkeypatch, code, tried_per):
    """Another file system (or none with hard links): symbolic links, after one try per split;
    a refusal that may concern one file only (Linux's protected hard links, too many links to
    it): a hard link is tried for each image."""
    import errno

    src = write_voc_export(tmp_path / "export")
    calls = fail_os_link(monkeypatch, getattr(errno, code))
    report = convert_roboflow(src, tmp_path / "out", link=True)
    images = [p for split in report.splits for p in (tmp_path / "out" / split).glob("*.jpg")]
    assert len(images) == report.total("images_out") > len(report.splits)
    for image in images:
        assert image.is_symlink() and Path(os.readlink(image)) == (src / image.parent.name / image.name).resolve()
    assert len(calls) == (len(report.splits) if tried_per == "split" else len(images))


def test_link_to_a_source_that_is_itself_a_link_links_its_file(tmp_path):
    """A relative symbolic link inside the export: the output links the file it names, never the
    link itself (which would dangle in the output folder)."""
    src = write_voc_export(tmp_path / "export")
    (src / "train/store").mkdir()
    os.rename(src / "train/f1.jpg", src / "train/store/f1.jpg")
    os.symlink("store/f1.jpg", src / "train/f1.jpg")
    convert_roboflow(src, tmp_path / "out", link=True)
    image = tmp_path / "out/train/f1.jpg"
    assert not image.is_symlink() and os.path.samefile(image, src / "train/store/f1.jpg")


def test_link_copies_where_no_link_of_either_kind_can_be_made(tmp_path, monkeypatch):
    """FAT and exFAT have neither hard nor symbolic links: the images are copied, once tried."""
    import errno

    src = write_voc_export(tmp_path / "export")
    calls = fail_os_link(monkeypatch, errno.EPERM)
    symlinks = []

    def no_symlink(source, target, *args, **kwargs):
        symlinks.append(target)
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlink)
    report = convert_roboflow(src, tmp_path / "out", link=True)
    images = [p for split in report.splits for p in (tmp_path / "out" / split).glob("*.jpg")]
    assert len(images) == report.total("images_out") > len(report.splits)
    for image in images:
        assert not image.is_symlink() and image.stat().st_nlink == 1
        assert image.read_bytes() == (src / image.parent.name / image.name).read_bytes()
    assert len(calls) == len(symlinks) == len(report.splits)


def test_linking_back_into_the_folder_being_replaced_copies(tmp_path, monkeypatch):
    """DST's own images reached through SRC's links: linking them would leave links to deleted
    files once --overwrite replaces DST, so they are copied (and reported)."""
    import errno

    original = write_voc_export(tmp_path / "export")
    convert_roboflow(original, tmp_path / "A")
    before = {p.relative_to(tmp_path / "A"): p.read_bytes() for p in (tmp_path / "A").rglob("*.jpg")}
    fail_os_link(monkeypatch, errno.EXDEV)  # B as on another file system: symbolic links into A
    convert_roboflow(tmp_path / "A", tmp_path / "B", link=True)
    assert all(p.is_symlink() for p in (tmp_path / "B").rglob("*.jpg"))
    report = convert_roboflow(tmp_path / "B", tmp_path / "A", link=True, overwrite=True)
    after = {p.relative_to(tmp_path / "A"): p for p in (tmp_path / "A").rglob("*.jpg")}
    assert after.keys() == before.keys()
    for name, image in after.items():
        assert not image.is_symlink() and image.read_bytes() == before[name]
    assert report.quirk_counts()["linked_into_output"] == len(before)


def test_class_list_from_every_split(tmp_path):
    src = write_voc_export(tmp_path / "export")
    convert_roboflow(src, tmp_path / "out")
    for split in ("train", "valid", "test"):
        doc = json.loads((tmp_path / f"out/{split}/_annotations.coco.json").read_text())
        assert [c["name"] for c in doc["categories"]] == ["VEHICLE TYPE 1", "VEHICLE TYPE 2", "wheel"]


def test_overwrite_replaces_an_earlier_conversion(tmp_path):
    convert_roboflow(write_yolo_export(tmp_path / "earlier"), tmp_path / "out")
    (tmp_path / "out/train/old.txt").write_text("old")
    convert_roboflow(write_voc_export(tmp_path / "export"), tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out/train/old.txt").exists() and (tmp_path / "out/train/f1.jpg").is_file()


def test_zip_export(tmp_path):
    import shutil

    src = write_voc_export(tmp_path / "export")
    archive = shutil.make_archive(str(tmp_path / "export"), "zip", root_dir=src)
    report = convert_roboflow(archive, tmp_path / "out", link=True)
    assert report.total("images_out") == 5 and "linked_as_copy" in report.quirk_counts()
    assert not (tmp_path / "out/train/f1.jpg").is_symlink()


def test_strict_raises_on_lost_data(tmp_path):
    from sam3_lora_kit.data import DataError

    src = write_coco_export(tmp_path / "export")
    with pytest.raises(DataError, match="missing.jpg|fewer than 3"):
        convert_roboflow(src, tmp_path / "out", strict=True)
    assert not (tmp_path / "out").exists()
