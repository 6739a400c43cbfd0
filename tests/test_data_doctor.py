"""The data doctor (``inspect``): counts, quirks, poor prompt names, leakage, JSON, exit status."""
from __future__ import annotations

import json
import shutil

import pytest

from data_fixtures import write_coco_export, write_voc_export, write_yolo_export
from sam3_lora_kit.cli import main
from sam3_lora_kit.data import convert_roboflow, inspect_dataset
from sam3_lora_kit.data.pipeline import poor_prompt_reason


@pytest.mark.parametrize("name,poor", [
    ("class_2", True), ("0", True), ("17", True), ("Class 3", True), ("VEHICLE TYPE 1", True), ("x", True),
    ("---", True), ("cat", False), ("traffic light", False), ("Octahedron", False), ("person-walking", False),
])
def test_poor_prompt_names(name, poor):
    assert (poor_prompt_reason(name) is not None) == poor


def test_reports_export_without_writing(tmp_path):
    src = write_coco_export(tmp_path / "export")
    report = inspect_dataset(src)
    assert report.format == "coco" and not report.fatal
    assert report.splits["train"].images_out == 3 and report.splits["train"].per_class == {"cat": 5}
    assert report.quirk_counts()["missing_image"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_clean_coco_folder_has_no_fixes_left(tmp_path):
    convert_roboflow(write_voc_export(tmp_path / "export"), tmp_path / "out")
    report = inspect_dataset(tmp_path / "out")
    fixes = [q.code for q in report.quirks if q.severity in ("fixed", "dropped", "fatal")]
    assert report.format == "coco" and fixes == []
    assert report.total("instances_out") == 6


def test_images_shared_between_splits(tmp_path):
    src = write_voc_export(tmp_path / "export")
    shutil.copy(src / "train/f1.jpg", src / "test/f1.jpg")
    shutil.copy(src / "train/f1.xml", src / "test/f1.xml")
    report = inspect_dataset(src)
    assert report.quirk_counts()["shared_between_splits"] == 1


def test_fatal_problems_give_non_zero_exit(tmp_path, capsys):
    src = write_yolo_export(tmp_path / "export")
    (src / "valid/labels/v1.txt").write_text("0 0.5\n")
    assert main(["inspect", str(src), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["fatal"] and any("v1.txt:1" in e for q in report["quirks"] for e in q["examples"])
    assert report["splits"]["train"]["images_out"] == 4  # the other splits are still counted


def test_cli_json_and_text(tmp_path, capsys):
    src = write_voc_export(tmp_path / "export")
    assert main(["inspect", str(src), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["categories"] == ["VEHICLE TYPE 1", "VEHICLE TYPE 2", "wheel"]
    assert main(["inspect", str(src)]) == 0
    assert "poor_prompt_name" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "out"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dst"] == str(tmp_path / "out")
