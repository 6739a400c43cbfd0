"""Optional: the three real Roboflow exports in ../shared/roboflow-samples (skipped where absent)."""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import pytest

from data_fixtures import tree_bytes
from sam3_lora_kit.data import convert_roboflow

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "roboflow-samples"
# folder -> (format, images out, instances out, quirks expected)
EXPECTED = {
    "coco_seg_nanoshapes": ("coco", 97, 9999, {"phantom_category", "missing_split"}),  # its boxes past the edge go unused: masks give the boxes
    "yolov9_det_sharks_tiny": ("yolo", 10, 60, {"yaml_path_ignored", "mixed_lines", "closing_point"}),
    "voc_vehicle_detect": ("voc", 26, 143, {"clipped", "class_in_one_split", "poor_prompt_name"}),
}
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/roboflow-samples not present")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_export_converts(tmp_path, name):
    from pycocotools.coco import COCO

    fmt, images, instances, quirks = EXPECTED[name]
    before = tree_bytes(SAMPLES / name)
    report = convert_roboflow(SAMPLES / name, tmp_path / "out")
    assert (report.format, report.total("images_out"), report.total("instances_out")) == (fmt, images, instances)
    assert quirks <= set(report.quirk_counts())
    assert tree_bytes(SAMPLES / name) == before
    for split in report.splits:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(tmp_path / "out" / split / "_annotations.coco.json"))
        assert len(coco.anns) == report.splits[split].instances_out


@pytest.mark.parametrize("name", ["yolov9_det_sharks_tiny", "voc_vehicle_detect"])
def test_real_export_agrees_with_supervision(tmp_path, name):
    sv = pytest.importorskip("supervision")
    from test_data_supervision import agreement, kit_boxes

    src = SAMPLES / name
    report = convert_roboflow(src, tmp_path / "out")
    ious = []
    for split in report.splits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name.startswith("yolo"):
                dataset = sv.DetectionDataset.from_yolo(str(src / split / "images"), str(src / split / "labels"),
                                                        str(src / "data.yaml"))
            else:
                dataset = sv.DetectionDataset.from_pascal_voc(str(src / split), str(src / split))
        ious += agreement(dataset, kit_boxes(tmp_path / "out", split))
    assert len(ious) == report.total("instances_out") and min(ious) >= 0.99
