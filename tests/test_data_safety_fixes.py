"""Safety fixes: polygons clipped as polygons, a sample cache never half-written, ``overwrite`` that
deletes only the kit's own output, and no parent folders left behind by a failed conversion."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_fixtures import tree_bytes, write_image, write_voc_export, write_yolo_export
from sam3_lora_kit.data import DataError, convert_roboflow, sample_data_dir
from sam3_lora_kit.data import sample as sample_module
from sam3_lora_kit.data.geometry import clean_polygons
from sam3_lora_kit.data.quirks import QuirkLog

REPO_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
W, H = 64, 48
SHIFT = 200  # original polygons are rasterised on a canvas shifted by this many pixels (all coordinates >= 0)


def _inside_area(polygon: list[float]) -> int:
    """Pixels of ``polygon`` rasterised by pycocotools that fall inside the W x H image."""
    from pycocotools import mask as mask_utils

    shifted = [v + SHIFT for v in polygon]
    size = 2 * SHIFT + max(W, H) * 4
    dense = mask_utils.decode(mask_utils.frPyObjects([shifted], size, size)[0])
    return int(dense[SHIFT:SHIFT + H, SHIFT:SHIFT + W].sum())


def _area(polygons: list[list[float]]) -> int:
    from pycocotools import mask as mask_utils

    rles = mask_utils.frPyObjects(polygons, H, W)
    return int(mask_utils.area(mask_utils.merge(rles)))


@pytest.mark.parametrize("polygon", [
    [0, 0, 200, 24, 0, 47],  # the reviewer's case: a far-off vertex
    [-30, -20, 90, 10, 20, 70],  # crosses every side
    [10, 10, 80, 10, 30, 24, 80, 40, 10, 40],  # concave, leaves and re-enters on the right
    [-10.5, 5.25, 30.75, -7.5, 70.125, 20.5, 30.5, 60.25],  # fractional vertices outside on all sides
])
def test_clipping_keeps_the_part_of_the_polygon_inside_the_image(polygon):
    quirks = QuirkLog()
    clipped = clean_polygons([polygon], W, H, "a.json", quirks)
    assert "clipped" in quirks and "empty_mask" not in quirks
    for p in clipped:
        assert min(p[0::2]) >= 0 and max(p[0::2]) <= W and min(p[1::2]) >= 0 and max(p[1::2]) <= H
    assert abs(_area(clipped) - _inside_area(polygon)) <= 5  # raster rounding along the border (was ~1000 off)


def test_polygons_inside_the_image_are_unchanged():
    polygons = [[10, 10, 30, 10, 30, 20, 10, 20], [0.1234, 0.0, 64.0, 0.0, 64.0, 48.0, 1.0005, 47.9996]]
    quirks = QuirkLog()
    assert clean_polygons(polygons, W, H, "a.json", quirks) == [[round(float(v), 3) for v in p] for p in polygons]
    assert not quirks.quirks


def test_polygon_outside_the_image_is_dropped():
    quirks = QuirkLog()
    inside = [1, 1, 5, 1, 5, 5]
    assert clean_polygons([[70, 0, 90, 0, 90, 10], inside], W, H, "a.json", quirks) == [inside]
    assert "clipped" in quirks and "empty_mask" not in quirks
    quirks = QuirkLog()
    assert clean_polygons([[70, 0, 90, 0, 90, 10], [0, 50, 9, 50, 9, 60]], W, H, "a.json", quirks) == []
    assert quirks.count("empty_mask") == 1  # the annotation is dropped, and said so


def test_polygon_along_the_border_is_dropped():
    quirks = QuirkLog()
    assert clean_polygons([[64, 0, 80, 10, 64, 20]], W, H, "a.json", quirks) == []  # touches x = 64 only
    assert quirks.count("empty_mask") == 1


def _outside_the_repository(monkeypatch, tmp_path: Path) -> Path:
    """Make ``sample_data_dir`` act as if installed outside the repository; returns its cache folder."""
    monkeypatch.setattr(sample_module, "__file__", str(tmp_path / "site" / "sam3_lora_kit" / "data" / "sample.py"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "sam3-lora-kit" / "sample"


def test_interrupted_sample_generation_leaves_no_cache(monkeypatch, tmp_path):
    cache = _outside_the_repository(monkeypatch, tmp_path)
    real_jpeg, calls = sample_module._jpeg, []

    def failing_jpeg(image):
        calls.append(1)
        if len(calls) == 25:  # well into the generation: train/ written, valid/ under way
            raise KeyboardInterrupt
        return real_jpeg(image)

    monkeypatch.setattr(sample_module, "_jpeg", failing_jpeg)
    with pytest.raises(KeyboardInterrupt):
        sample_data_dir()
    assert len(calls) == 25 and not cache.exists() and list(cache.parent.iterdir()) == []
    monkeypatch.setattr(sample_module, "_jpeg", real_jpeg)
    assert sample_data_dir() == cache
    assert tree_bytes(cache) == tree_bytes(REPO_SAMPLE)
    assert [p.name for p in cache.parent.iterdir()] == ["sample"]


def test_sample_generation_that_loses_the_race_keeps_the_winners_copy(monkeypatch, tmp_path):
    cache = _outside_the_repository(monkeypatch, tmp_path)
    real_make = sample_module.make_sample_dataset

    def racing_make(out_dir, seed=0):
        real_make(out_dir, seed)
        if not cache.exists():  # another process finishes first
            real_make(cache, seed)
            (cache / "winner.txt").write_text("first")

    monkeypatch.setattr(sample_module, "make_sample_dataset", racing_make)
    assert sample_data_dir() == cache
    assert (cache / "winner.txt").read_text() == "first"
    assert [p.name for p in cache.parent.iterdir()] == ["sample"]  # the loser's copy discarded


def test_half_written_cache_of_an_older_kit_is_regenerated(monkeypatch, tmp_path):
    cache = _outside_the_repository(monkeypatch, tmp_path)
    (cache / "coco-segmentation" / "train").mkdir(parents=True)
    assert sample_data_dir() == cache
    assert tree_bytes(cache) == tree_bytes(REPO_SAMPLE)
    assert [p.name for p in cache.parent.iterdir()] == ["sample"]


def test_overwrite_refuses_a_folder_the_kit_did_not_write(tmp_path):
    src = write_yolo_export(tmp_path / "export")
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('mine')\n")
    (proj / "notes.txt").write_text("notes")
    before = tree_bytes(proj)
    with pytest.raises(DataError) as caught:
        convert_roboflow(src, proj, overwrite=True)
    assert caught.value.path == str(proj) and "does not look like a converted dataset" in caught.value.problem
    assert tree_bytes(proj) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "proj"]


def test_overwrite_refuses_kit_output_with_the_users_files_added(tmp_path):
    src = write_voc_export(tmp_path / "export")
    convert_roboflow(src, tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="notes.txt"):
        convert_roboflow(src, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine" and (tmp_path / "out" / "train").is_dir()


def test_overwrite_replaces_the_kits_own_output_and_an_empty_folder(tmp_path):
    src = write_voc_export(tmp_path / "export")
    yolo = write_yolo_export(tmp_path / "yolo")
    (tmp_path / "out").mkdir()
    convert_roboflow(yolo, tmp_path / "out", overwrite=True)  # empty: written
    assert json.loads((tmp_path / "out/train/_annotations.coco.json").read_text())["categories"][0]["name"] == "fish"
    convert_roboflow(src, tmp_path / "out", overwrite=True)  # the kit's own output: replaced
    doc = json.loads((tmp_path / "out/train/_annotations.coco.json").read_text())
    assert doc["categories"][0]["name"] == "VEHICLE TYPE 1" and (tmp_path / "out/train/f1.jpg").is_file()
    convert_roboflow(src, tmp_path / "out", overwrite=True)  # and again, as a re-run notebook does
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "out", "yolo"]


def _bad_yolo_export(root: Path) -> Path:
    """A YOLO export whose only label names class 5 of 2."""
    root.mkdir(parents=True)
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    write_image(root / "train" / "images" / "a.jpg", 80, 60)
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "a.txt").write_text("5 0.5 0.5 0.2 0.2\n")
    return root


def test_failed_conversion_removes_the_parent_folders_it_made(tmp_path):
    src = _bad_yolo_export(tmp_path / "export")
    with pytest.raises(DataError):
        convert_roboflow(src, tmp_path / "newp" / "deep" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_failed_conversion_keeps_parent_folders_that_were_there(tmp_path):
    src = _bad_yolo_export(tmp_path / "export")
    (tmp_path / "newp").mkdir()
    with pytest.raises(DataError):
        convert_roboflow(src, tmp_path / "newp" / "deep" / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "newp"] and not any((tmp_path / "newp").iterdir())


def test_successful_conversion_keeps_the_parent_folders_it_made(tmp_path):
    src = write_voc_export(tmp_path / "export")
    convert_roboflow(src, tmp_path / "newp" / "deep" / "out")
    assert [p.name for p in (tmp_path / "newp" / "deep").iterdir()] == ["out"]


def test_sample_polygons_are_unchanged_by_clipping():
    """Every polygon of the bundled sample lies inside its image: cleaning leaves it as it was."""
    doc = json.loads((REPO_SAMPLE / "coco-segmentation/train/_annotations.coco.json").read_text())
    quirks = QuirkLog()
    for ann in doc["annotations"]:
        assert clean_polygons(ann["segmentation"], 160, 160, "a", quirks) == ann["segmentation"]
    assert "clipped" not in quirks
