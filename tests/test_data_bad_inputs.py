"""Converter safety beyond single bad files: DST that is not empty or lies inside SRC, lenient missing images.

The table of bad inputs (one broken file or export per case, each checked through the command
line) lives in ``test_reliability_corpus.py``.
"""
from __future__ import annotations

import pytest

from data_fixtures import fail_os_link, tree_bytes, write_coco_export, write_voc_export, write_yolo_export
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


def _zip_folder(folder, archive, rename=lambda name: name):
    import zipfile

    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, rename(path.relative_to(folder).as_posix()))
    return archive


def test_errors_inside_a_zip_name_the_file_in_the_zip(tmp_path, capsys):
    from sam3_lora_kit.cli import main

    src = write_coco_export(tmp_path / "export")
    (src / "train" / "_annotations.coco.json").write_text('{"images": [')
    archive = _zip_folder(src, tmp_path / "bad.zip")
    with pytest.raises(DataError) as caught:
        convert_roboflow(archive, tmp_path / "out")
    assert caught.value.path == f"{archive}!train/_annotations.coco.json"
    assert "partial" not in str(caught.value) and "not valid JSON" in str(caught.value)
    assert main(["inspect", str(archive)]) != 0
    report = capsys.readouterr().out
    assert f"{archive}!train/_annotations.coco.json" in report and "sam3-lora-inspect-" not in report


def test_quirk_examples_from_a_zip_name_the_zip(tmp_path):
    src = write_coco_export(tmp_path / "export")  # its train/ lists an image that is not there
    report = convert_roboflow(_zip_folder(src, tmp_path / "ok.zip"), tmp_path / "out")
    examples = [e for q in report.quirks for e in q.examples]
    assert any(e.startswith(f"{tmp_path / 'ok.zip'}!train/") for e in examples), examples
    assert not any("partial" in e for e in examples), examples


def test_zip_written_on_windows_has_folders_not_backslash_names(tmp_path):
    src = write_yolo_export(tmp_path / "export")
    archive = _zip_folder(src, tmp_path / "win.zip", rename=lambda name: name.replace("/", "\\"))
    expected = convert_roboflow(src, tmp_path / "from_folder")
    report = convert_roboflow(archive, tmp_path / "from_zip")
    assert {s: st.to_dict() for s, st in report.splits.items()} == {s: st.to_dict() for s, st in expected.splits.items()}
    assert report.total("images_out") > 0


def test_the_kits_linked_output_is_readable_again(tmp_path, capsys, monkeypatch):
    """Symbolic links (what ``--link`` writes where hard links fail) that leave the folder are read back."""
    import errno

    from sam3_lora_kit.cli import main
    from sam3_lora_kit.data import CocoSegmentationDataset

    fail_os_link(monkeypatch, errno.EXDEV)
    src = write_yolo_export(tmp_path / "export")
    linked = tmp_path / "linked"
    first = convert_roboflow(src, linked, link=True)
    assert any(p.is_symlink() for p in (linked / "train").iterdir())
    assert main(["inspect", str(linked)]) == 0, capsys.readouterr()
    again = convert_roboflow(linked, tmp_path / "again")
    assert again.total("instances_out") == first.total("instances_out") > 0
    assert len(CocoSegmentationDataset(tmp_path / "again", "train")) == first.splits["train"].images_out


def test_an_exports_own_link_outside_is_still_refused_next_to_a_kit_written_name(tmp_path):
    """Only a COCO file the converter wrote lets image links leave the folder; a look-alike file name is not enough."""
    import os

    src = write_coco_export(tmp_path / "export")
    outside = tmp_path / "secret.jpg"
    (src / "train" / "a.jpg").rename(outside)
    os.symlink(outside, src / "train" / "a.jpg")
    with pytest.raises(DataError, match="pointing outside the export"):
        convert_roboflow(src, tmp_path / "out")


def test_a_link_to_another_split_of_the_export_is_refused_with_both_places_named(tmp_path):
    """Inside the export but outside its split folder: the error says so and where the link points."""
    import os

    src = write_voc_export(tmp_path / "export")
    (src / "train" / "f2.jpg").unlink()
    os.symlink("../valid/v1.jpg", src / "train" / "f2.jpg")
    with pytest.raises(DataError, match=r"'f2.jpg' is a link pointing outside its folder .*train \(to .*valid.v1\.jpg\)"):
        convert_roboflow(src, tmp_path / "out")


def test_output_under_a_file_names_that_file(tmp_path):
    src = write_voc_export(tmp_path / "export")
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(DataError) as caught:
        convert_roboflow(src, tmp_path / "afile" / "out")
    assert caught.value.path == str(tmp_path / "afile") and "is a file" in caught.value.problem
    assert (tmp_path / "afile").read_text() == "mine"


def _no_leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _export_and_kept_dst(tmp_path):
    """A VOC export and a DST the kit converted earlier (from a YOLO export), with ``train/keep.txt`` added."""
    src = write_voc_export(tmp_path / "export")
    dst = tmp_path / "out"
    convert_roboflow(write_yolo_export(tmp_path / "earlier"), dst)
    (dst / "train" / "keep.txt").write_text("mine")
    return src, dst


@pytest.mark.parametrize("step", ["moving the old output aside", "placing the new output"])
def test_overwrite_whose_swap_fails_leaves_the_old_output_as_it_was(tmp_path, monkeypatch, step):
    from pathlib import Path

    src, dst = _export_and_kept_dst(tmp_path)
    before = tree_bytes(dst)
    real_rename = Path.rename

    def refusing_rename(self, target):
        moving_old = self == dst
        placing_new = Path(target) == dst and ".partial-" in self.parent.name
        if (moving_old if step == "moving the old output aside" else placing_new):
            raise PermissionError(1, "Operation not permitted")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", refusing_rename)
    with pytest.raises(DataError, match="cannot be replaced .*left as it was"):
        convert_roboflow(src, dst, overwrite=True)
    assert tree_bytes(dst) == before and not _no_leftovers(tmp_path)


def test_overwrite_whose_old_output_cannot_be_deleted_succeeds_and_says_where_it_is(tmp_path, monkeypatch):
    import shutil

    from sam3_lora_kit.data import convert as convert_module

    src, dst = _export_and_kept_dst(tmp_path)
    real_rmtree = shutil.rmtree

    def refuse_old(path, *args, **kwargs):
        if ".old-" in str(path):
            raise PermissionError(1, "Operation not permitted")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(convert_module.shutil, "rmtree", refuse_old)
    report = convert_roboflow(src, dst, overwrite=True)
    assert (dst / "train" / "_annotations.coco.json").is_file() and not (dst / "train" / "keep.txt").exists()
    left = [q for q in report.quirks if q.code == "old_output_left"]
    assert left and (tmp_path / left[0].examples[0].split("/")[-1] / "dst" / "train" / "keep.txt").read_text() == "mine"


def test_sigterm_during_convert_cleans_up_like_ctrl_c(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from sam3_lora_kit.cli import main
    from sam3_lora_kit.data import convert as convert_module

    src = write_yolo_export(tmp_path / "export")
    real_iter = convert_module.iter_split

    def terminated_midway(*args, **kwargs):
        for number, item in enumerate(real_iter(*args, **kwargs)):
            if number == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    monkeypatch.setattr(convert_module, "iter_split", terminated_midway)

    def survive(signum, frame):  # in place of the kit's handler, should it be missing: pytest lives on
        pass

    pytest_handler = signal.signal(signal.SIGTERM, survive)
    try:
        status = main(["convert", str(src), str(tmp_path / "out")])
        assert signal.getsignal(signal.SIGTERM) is survive  # the kit's handler lasts only while main runs
    finally:
        signal.signal(signal.SIGTERM, pytest_handler)
    assert status == 143 and "terminated" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not _no_leftovers(tmp_path)
