"""Converter safety beyond single bad files: DST that is not empty or lies inside SRC, lenient missing images.

The table of bad inputs (one broken file or export per case, each checked through the command
line) lives in ``test_reliability_corpus.py``.
"""
from __future__ import annotations

import pytest

from data_fixtures import tree_bytes, write_coco_export, write_voc_export, write_yolo_export
from sam3_lora_kit.data import DataError, convert_roboflow


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


def test_missing_image_is_reported_not_fatal(tmp_path):
    src = write_coco_export(tmp_path / "export")
    report = convert_roboflow(src, tmp_path / "out")
    assert report.quirk_counts()["missing_image"] == 1
