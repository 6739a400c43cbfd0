"""The bad-input corpus: one table of broken datasets, configs and adapters, each with the error it must give.

Every case is written by the test itself (no binary fixtures). For each one the test checks that
the command line (``sam3_lora_kit.cli.main``, in-process; a few also as a real subprocess) exits
non-zero with ONE stderr line naming the file and the problem and no traceback; that ``--debug``
lets the named exception (and its traceback) through; that ``sam3-lora inspect`` exits non-zero on
the same export; that nothing appears in the target or next to it; and that the source is
byte-for-byte unchanged. Quirks that only lose data (a polygon under
three points, an image listed but missing, a label without its image) are reported and dropped by
default, so they are errors under ``--strict``; the default run must still report them.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from data_fixtures import coco_doc, voc_xml, write_image

REPO = Path(__file__).resolve().parents[1]


# -- what a case sets up ------------------------------------------------------------------------

@dataclass
class Setup:
    """A broken input ready to run: the CLI arguments (or a Python call), its source and its target."""

    source: Path  # file or folder that must stay byte-for-byte unchanged
    target: Path  # must not appear
    argv: list[str] | None = None  # sam3-lora arguments (without --debug)
    call: Callable[[], object] | None = None  # Python API instead of the CLI (cases that need a model)
    unchanged: Callable[[], object] | None = None  # a value that must be equal before and after (a model's weights)


@dataclass(frozen=True)
class Case:
    build: Callable[[Path], tuple[Setup, str]]  # tmp folder -> (setup, the file name the message must name)
    problem: str  # words the message must contain
    error: str  # the exception class raised with --debug (by name)
    flags: tuple[str, ...] = ()  # extra CLI flags (--strict)
    reported: str | None = None  # quirk code reported (exit 0) when run without ``flags``
    subprocess: bool = False  # also run as ``python -m sam3_lora_kit.cli`` in a fresh process


# -- broken Roboflow exports ----------------------------------------------------------------------

GOOD_IMAGE = {"id": 0, "file_name": "a.jpg", "width": 64, "height": 48}
GOOD_ANN = {"id": 0, "image_id": 0, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
            "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]], "iscrowd": 0}


def convert(tmp: Path, src: Path, file_part: str) -> tuple[Setup, str]:
    return Setup(source=src, target=tmp / "out", argv=["convert", str(src), str(tmp / "out")]), file_part


def coco_with(tmp: Path, doc: object | None = None, raw: bytes | None = None, **changes) -> tuple[Setup, str]:
    """A one-image COCO export whose JSON is ``raw``, ``doc``, or the good doc with ``changes``."""
    root = tmp / "export"
    write_image(root / "train" / "a.jpg", 64, 48)
    path = root / "train" / "_annotations.coco.json"
    if raw is None:
        if doc is None:
            image, ann = {**GOOD_IMAGE, **changes.get("image", {})}, {**GOOD_ANN, **changes.get("ann", {})}
            doc = coco_doc([image] + changes.get("more_images", []), [ann] + changes.get("more_anns", []))
        raw = json.dumps(doc).encode()
    path.write_bytes(raw)
    return convert(tmp, root, "_annotations.coco.json")


def yolo_with(tmp: Path, line: str = "0 0.5 0.5 0.2 0.2", yaml: str = "names: [fish]\n",
              label: bytes | None = None, orphan: bool = False) -> tuple[Setup, str]:
    root = tmp / "export"
    write_image(root / "train" / "images" / "a.jpg", 64, 48)
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "a.txt").write_bytes(label if label is not None else (line + "\n").encode())
    if orphan:
        (root / "train" / "labels" / "gone.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml)
    name = "gone.txt" if orphan else "a.txt" if yaml == "names: [fish]\n" else "data.yaml"
    return convert(tmp, root, name)


def voc_with(tmp: Path, xml: str) -> tuple[Setup, str]:
    root = tmp / "export"
    write_image(root / "train" / "a.jpg", 64, 48)
    (root / "train" / "a.xml").write_text(xml)
    return convert(tmp, root, "a.xml")


def bad_image(tmp: Path, data: bytes | None) -> tuple[Setup, str]:
    """The good COCO export whose image is replaced by ``data`` (None: cut in half)."""
    setup, _ = coco_with(tmp)
    image = setup.source / "train" / "a.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2] if data is None else data)
    return setup, "a.jpg"


def link_outside(tmp: Path, folder: bool = False) -> tuple[Setup, str]:
    setup, _ = coco_with(tmp)
    if folder:  # a whole split folder that is a link to somewhere else
        (setup.source / "train").rename(tmp / "elsewhere")
        os.symlink(tmp / "elsewhere", setup.source / "train")
        return setup, "train"
    outside = write_image(tmp / "secret.jpg", 64, 48)
    (setup.source / "train" / "a.jpg").unlink()
    os.symlink(outside, setup.source / "train" / "a.jpg")
    return setup, "a.jpg"


def zipped(tmp: Path, extra: Callable[[zipfile.ZipFile], None]) -> tuple[Setup, str]:
    """The good COCO export as a .zip, plus whatever ``extra`` adds to the archive."""
    setup, _ = coco_with(tmp / "x")
    archive = tmp / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(setup.source.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(setup.source).as_posix())
        extra(zf)
    return convert(tmp, archive, "export.zip")


def zip_symlink(zf: zipfile.ZipFile) -> None:
    info = zipfile.ZipInfo("train/b.jpg")
    info.external_attr = (0o120777 << 16)
    zf.writestr(info, "/etc/passwd")


def train_without_usable_image(tmp: Path) -> tuple[Setup, str]:
    """valid/ is the good split; train/ lists only an image that is not there."""
    setup, _ = coco_with(tmp)
    (setup.source / "train").rename(setup.source / "valid")
    (setup.source / "train").mkdir()
    bad = coco_doc([{**GOOD_IMAGE, "file_name": "gone.jpg"}], [GOOD_ANN])
    (setup.source / "train" / "_annotations.coco.json").write_text(json.dumps(bad))
    return setup, "train/: 1 images listed, none usable"


def masks_with(tmp: Path, mask_size: tuple[int, int] = (64, 48), classes: str = "Pixel Value, Class\n0, background\n1, cat\n"
               ) -> tuple[Setup, str]:
    """A one-image semantic-mask export (image 64x48) with a mask of ``mask_size`` and ``classes``."""
    from PIL import Image

    root = tmp / "export"
    write_image(root / "train" / "a.jpg", 64, 48)
    Image.new("L", mask_size, 1).save(root / "train" / "a_mask.png")
    (root / "train" / "_classes.csv").write_text(classes)
    return convert(tmp, root, "a_mask.png" if mask_size != (64, 48) else "_classes.csv")


def split_only(tmp: Path, split: str) -> tuple[Setup, str]:
    setup, _ = coco_with(tmp)
    (setup.source / "train").rename(setup.source / split)
    return setup, "export"


def empty_export(tmp: Path) -> tuple[Setup, str]:
    (tmp / "export" / "train").mkdir(parents=True)
    return convert(tmp, tmp / "export", "export")


def not_a_zip(tmp: Path) -> tuple[Setup, str]:
    (tmp / "export.zip").write_bytes(b"PK\x03\x04 but not really a zip")
    return convert(tmp, tmp / "export.zip", "export.zip")


# -- broken training configs ----------------------------------------------------------------------

def config_with(tmp: Path, text: str) -> tuple[Setup, str]:
    folder = tmp / "inputs"
    folder.mkdir()
    (folder / "run.yaml").write_text(text)
    argv = ["train", "--config", str(folder / "run.yaml"), "--output-dir", str(tmp / "run"), "--no-progress"]
    return Setup(source=folder, target=tmp / "run", argv=argv), "run.yaml"


# -- broken adapters and checkpoints ------------------------------------------------------------

MARKER = "executed-by-pickle"


class Smuggler:
    """Unpickling this creates the folder ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def pickled_adapter(tmp: Path) -> tuple[Setup, str]:
    """A pickle named like an adapter, given to ``sam3-lora predict --adapter``."""
    folder = tmp / "inputs"
    write_image(folder / "photo.jpg", 32, 32)
    (folder / "adapter.safetensors").write_bytes(pickle.dumps({"lora_A": Smuggler(tmp / MARKER)}))
    argv = ["predict", str(folder / "photo.jpg"), "--prompt", "cat", "--adapter", str(folder / "adapter.safetensors"),
            "--device", "cpu", "--out", str(tmp / "out.png")]
    return Setup(source=folder, target=tmp / "out.png", argv=argv), "adapter.safetensors"


def not_an_adapter(tmp: Path, truncated: bool) -> tuple[Setup, str]:
    """A plain safetensors file without the kit's metadata, or a cut-off one, given as ``--adapter``."""
    import torch
    from safetensors.torch import save_file

    folder = tmp / "inputs"
    write_image(folder / "photo.jpg", 32, 32)
    adapter = folder / "adapter.safetensors"
    save_file({"weight": torch.zeros(4, 4)}, str(adapter))
    if truncated:
        adapter.write_bytes(adapter.read_bytes()[:40])
    argv = ["predict", str(folder / "photo.jpg"), "--prompt", "cat", "--adapter", str(adapter),
            "--device", "cpu", "--out", str(tmp / "out.png")]
    return Setup(source=folder, target=tmp / "out.png", argv=argv), "adapter.safetensors"


def _toy(tail: int):
    """A small MLP; ``tail`` changes the base architecture, not the LoRA layer (module ``0``)."""
    import torch
    from torch import nn

    from sam3_lora_kit.lora import inject_lora

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, tail))
    inject_lora(model, target_modules=["0"], rank=2, alpha=4)
    return model


def adapter_other_architecture(tmp: Path) -> tuple[Setup, str]:
    """An adapter saved on one model, loaded into one whose LoRA layers match but whose base differs."""
    import torch

    from sam3_lora_kit.lora import load_adapter, lora_state_dict, save_adapter

    folder = tmp / "inputs"
    made_on = _toy(4)
    with torch.no_grad():
        for tensor in lora_state_dict(made_on).values():
            tensor.fill_(0.5)  # non-zero, so a partial load would show in the model
    save_adapter(made_on, folder / "adapter.safetensors")
    other = _toy(6)
    return Setup(source=folder, target=folder / "nothing", call=lambda: load_adapter(other, folder / "adapter.safetensors"),
                 unchanged=lambda: {k: v.tolist() for k, v in other.state_dict().items()}), "adapter.safetensors"


def pickled_checkpoint(tmp: Path) -> tuple[Setup, str]:
    """A base checkpoint (torch.save) smuggling code, given to the SAM 3 loader."""
    import torch
    from torch import nn

    from sam3_lora_kit.sam3.build import load_sam3_checkpoint

    folder = tmp / "inputs"
    folder.mkdir()
    torch.save({"weight": torch.zeros(2, 2), "bias": Smuggler(tmp / MARKER)}, folder / "sam3.pt")
    model = nn.Linear(2, 2)
    return Setup(source=folder, target=tmp / MARKER, call=lambda: load_sam3_checkpoint(model, folder / "sam3.pt"),
                 unchanged=lambda: {k: v.tolist() for k, v in model.state_dict().items()}), "sam3.pt"


def pickled_resume_checkpoint(tmp: Path) -> tuple[Setup, str]:
    """A training checkpoint (what ``--resume`` reads) smuggling code."""
    import torch

    from sam3_lora_kit.train.checkpoint import load_checkpoint

    folder = tmp / "inputs"
    folder.mkdir()
    torch.save({"format": "anything", "lora": Smuggler(tmp / MARKER)}, folder / "step_0000010.pt")
    return Setup(source=folder, target=tmp / MARKER, call=lambda: load_checkpoint(folder / "step_0000010.pt")), \
        "step_0000010.pt"


VOC_OK = voc_xml("a.jpg", 64, 48, [("car", 2, 2, 10, 10)])
D = "DataError"

CASES: dict[str, Case] = {
    # COCO JSON
    "json truncated": Case(lambda t: coco_with(t, raw=b'{"images": [{"id": 0,'), "not valid JSON", D, subprocess=True),
    "json not utf-8": Case(lambda t: coco_with(t, raw=b'{"images": "\xff\xfe"}'), "not UTF-8", D),
    "json top level list": Case(lambda t: coco_with(t, raw=b"[1, 2]"), "top level must be a JSON object", D),
    "json missing images": Case(lambda t: coco_with(t, doc={"annotations": [], "categories": []}), "missing 'images'", D),
    "json missing annotations": Case(lambda t: coco_with(t, doc={"images": [], "categories": []}),
                                     "missing 'annotations'", D),
    "json missing categories": Case(lambda t: coco_with(t, doc={"images": [], "annotations": []}),
                                    "missing 'categories'", D),
    "duplicate image id": Case(lambda t: coco_with(t, more_images=[{**GOOD_IMAGE, "file_name": "b.jpg"}]),
                               "duplicate image id 0", D),
    "duplicate annotation id": Case(lambda t: coco_with(t, more_anns=[GOOD_ANN]), "duplicate annotation id 0", D),
    "annotation of unknown image": Case(lambda t: coco_with(t, ann={"image_id": 7}), "unknown image id 7", D),
    "annotation of unknown category": Case(lambda t: coco_with(t, ann={"category_id": 9}), "unknown category id 9", D),
    # geometry
    "polygon under 3 points": Case(lambda t: coco_with(t, ann={"segmentation": [[1, 1, 6, 6]]}),
                                   "polygon with fewer than 3 points (an error in strict mode", D, flags=("--strict",), reported="short_polygon"),
    "polygon odd coordinates": Case(lambda t: coco_with(t, ann={"segmentation": [[1, 1, 6, 1, 6, 6, 1]]}),
                                    "odd number", D),
    "polygon nan": Case(lambda t: coco_with(t, ann={"segmentation": [[1, 1, float("nan"), 1, 6, 6]]}), "not finite", D),
    "polygon infinite": Case(lambda t: coco_with(t, ann={"segmentation": [[1, 1, float("inf"), 1, 6, 6]]}),
                             "not finite", D),
    "box negative size": Case(lambda t: coco_with(t, ann={"segmentation": [], "bbox": [5, 5, -3, 4]}),
                              "negative size", D),
    "rle wrong size": Case(lambda t: coco_with(t, ann={"segmentation": {"size": [10, 10], "counts": [100]}}),
                           "does not match the image", D),
    "rle text counts too short": Case(lambda t: coco_with(t, ann={"segmentation": {"size": [48, 64], "counts": "01"},
                                                                  "iscrowd": 1}),
                                      "RLE counts cover 1 pixels, not height*width = 3072", D),
    "rle text counts too long": Case(lambda t: coco_with(t, ann={"segmentation": {"size": [48, 64], "counts": "PT18"},
                                                                 "iscrowd": 1}),
                                     "not height*width = 3072", D),
    "rle text counts not coco text": Case(lambda t: coco_with(t, ann={"segmentation": {"size": [48, 64], "counts": "\u00e9"},
                                                                      "iscrowd": 1}),
                                          "outside COCO's alphabet", D),
    "bbox not a list": Case(lambda t: coco_with(t, ann={"segmentation": [], "bbox": 5}),
                            "bbox must be [x, y, width, height]", D),
    "coordinate beyond float range": Case(lambda t: coco_with(t, ann={"segmentation": [[1, 1, 10 ** 400, 1, 6, 6]]}),
                                          "too large for a float", D),
    "duplicate category id": Case(lambda t: coco_with(t, doc=coco_doc([GOOD_IMAGE], [GOOD_ANN], [
        {"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}])), "category id 1 is used twice, for 'cat' and 'dog'", D),
    "train split without a usable image": Case(train_without_usable_image, "no usable image: nothing to train on", D),
    # semantic masks
    "mask size differs from its image": Case(lambda t: masks_with(t, mask_size=(32, 24)),
                                             "mask is 32x24 but its image a.jpg is 64x48", D),
    "mask class without a name": Case(lambda t: masks_with(t, classes="Pixel Value, Class\n0, background\n1, \n"),
                                      "pixel value 1 has an empty class name", D),
    # image files
    "image missing": Case(lambda t: coco_with(t, more_images=[{**GOOD_IMAGE, "id": 1, "file_name": "gone.jpg"}]),
                          "image listed but missing on disk (an error in strict mode", D,
                          flags=("--strict",), reported="missing_image"),
    "image empty": Case(lambda t: bad_image(t, b""), "empty", D),
    "image truncated": Case(lambda t: bad_image(t, None), "does not decode", D),
    "image not an image": Case(lambda t: bad_image(t, b"hello, I am text"), "not an image", D),
    # paths that leave the export
    "file name with ../": Case(lambda t: coco_with(t, image={"file_name": "../a.jpg"}), "escapes the export", D),
    "file name with ..\\": Case(lambda t: coco_with(t, image={"file_name": "..\\a.jpg"}), "escapes the export", D),
    "file name absolute": Case(lambda t: coco_with(t, image={"file_name": "/etc/passwd"}), "absolute path", D),
    "image link outside": Case(link_outside, "pointing outside the export", D),
    "split folder link outside": Case(lambda t: link_outside(t, folder=True), "pointing outside the export", D),
    "zip entry lands outside": Case(lambda t: zipped(t, lambda zf: zf.writestr("../../evil.txt", "gotcha")),
                                    "would land outside the target", D),
    "zip entry is a link": Case(lambda t: zipped(t, zip_symlink), "symbolic link", D),
    "zip not a zip": Case(not_a_zip, "not a valid zip file", D),
    # YOLO
    "yolo too few values": Case(lambda t: yolo_with(t, "0 0.5 0.5"), "expected at least 5", D),
    "yolo unknown class": Case(lambda t: yolo_with(t, "3 0.5 0.5 0.2 0.2"), "unknown class id 3", D),
    "yolo outside 0..1": Case(lambda t: yolo_with(t, "0 1.5 0.5 0.2 0.2"), "outside 0..1", D),
    "yolo polygon odd coordinates": Case(lambda t: yolo_with(t, "0 0.1 0.1 0.5 0.1 0.5"), "odd number", D),
    "yolo nan": Case(lambda t: yolo_with(t, "0 nan 0.5 0.2 0.2"), "finite", D),
    "yolo label not utf-8": Case(lambda t: yolo_with(t, label=b"0 0.5 0.5 0.2 0.2\xff\n"), "not UTF-8", D),
    "yolo label without image": Case(lambda t: yolo_with(t, orphan=True), "label file without an image (an error in strict mode", D,
                                     flags=("--strict",), reported="orphan_label"),
    "data.yaml not yaml": Case(lambda t: yolo_with(t, yaml="names: [fish\n  : -\n"), "not valid YAML", D),
    "data.yaml without names": Case(lambda t: yolo_with(t, yaml="nc: 1\n"), "no class 'names'", D),
    "data.yaml null name": Case(lambda t: yolo_with(t, yaml="names: [null]\n"), "class 0 in 'names' must be a non-empty name", D),
    "data.yaml list as a name": Case(lambda t: yolo_with(t, yaml="names: [[a, b]]\n"), "must be a non-empty name", D),
    # VOC
    "voc not xml": Case(lambda t: voc_with(t, "<annotation><size>"), "not valid XML", D),
    "voc size not a number": Case(lambda t: voc_with(t, VOC_OK.replace("<width>64</width>", "<width>wide</width>")),
                                  "is not a number ('wide')", D),
    "voc entity declaration": Case(lambda t: voc_with(t, '<!DOCTYPE a [<!ENTITY x "y">]>' + VOC_OK), "DOCTYPE", D),
    "voc file name with ../": Case(lambda t: voc_with(t, VOC_OK.replace(">a.jpg<", ">../../a.jpg<")),
                                   "escapes the export", D),
    # whole exports
    "empty export": Case(empty_export, "empty export", D),
    "only a test split": Case(lambda t: split_only(t, "test"), "no train/ split", D),
    # training configs
    "config unknown key": Case(lambda t: config_with(t, "rnak: 8\n"), "unknown key 'rnak' (did you mean rank?)",
                               "ConfigError"),
    "config wrong type": Case(lambda t: config_with(t, "rank: eight\n"), "rank must be", "ConfigError"),
    "config wrong type (list)": Case(lambda t: config_with(t, "lr: [0.1]\n"), "lr must be", "ConfigError"),
    "config out of range": Case(lambda t: config_with(t, "dropout: 1.5\n"), "dropout must be", "ConfigError"),
    "config not yaml": Case(lambda t: config_with(t, "rank: [8\n"), "not valid YAML", "ConfigError"),
    "config top level list": Case(lambda t: config_with(t, "- rank\n- 8\n"), "must be a mapping", "ConfigError"),
    # adapters and base checkpoints
    "adapter is a pickle": Case(pickled_adapter, "not a safetensors adapter file", "AdapterError", subprocess=True),
    "adapter without kit metadata": Case(lambda t: not_an_adapter(t, False), "not a sam3-lora-kit adapter", "AdapterError"),
    "adapter truncated": Case(lambda t: not_an_adapter(t, True), "not a safetensors adapter file", "AdapterError"),
    "adapter for another architecture": Case(adapter_other_architecture, "another base architecture", "AdapterError"),
    "resume checkpoint is a code-carrying pickle": Case(pickled_resume_checkpoint, "not a readable", "CheckpointError"),
    "checkpoint is a code-carrying pickle": Case(pickled_checkpoint, "refused, it holds pickled Python objects", "CheckpointError"),
}


# -- the checks -------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` with its bytes (files), link target (links) or '<dir>'."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                out[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[key] = "<dir>"
            else:
                out[key] = path.read_bytes()
    return out


def one_line_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def check_message(message: str, file_part: str, problem: str) -> None:
    assert "\n" not in message.strip(), message
    assert file_part in message, f"{file_part!r} not named in: {message}"
    assert problem in message, f"{problem!r} not in: {message}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_error(tmp_path, capsys, name):
    from sam3_lora_kit.cli import main

    case = CASES[name]
    setup, file_part = case.build(tmp_path)
    capsys.readouterr()
    before = snapshot(tmp_path)
    weights = setup.unchanged() if setup.unchanged else None

    if setup.argv is None:  # Python API: the named exception, one line
        with pytest.raises(Exception) as caught:
            setup.call()
        assert type(caught.value).__name__ == case.error, repr(caught.value)
        check_message(str(caught.value), file_part, case.problem)
    else:
        argv = setup.argv + list(case.flags)
        assert main(argv) != 0
        captured = capsys.readouterr()
        message = one_line_error(captured.err)
        check_message(message, file_part, case.problem)
        assert message.startswith(f"sam3-lora {argv[0]}: error: ")
        with pytest.raises(Exception) as caught:  # --debug lets the exception and its traceback through
            main(["--debug", *argv])
        assert type(caught.value).__name__ == case.error, repr(caught.value)
        assert caught.traceback  # a real traceback to show
        if argv[0] == "convert":  # the doctor gives the same verdict (lost data alone is reported, exit 0)
            assert (main(["inspect", argv[1]]) == 0) == bool(case.flags)
            assert "Traceback" not in capsys.readouterr().err
    assert not setup.target.exists()
    assert not (tmp_path / MARKER).exists(), "a pickle ran code"
    assert snapshot(tmp_path) == before  # source unchanged; nothing new anywhere (no target, no temp folder)
    assert not (tmp_path.parent / "evil.txt").exists()
    if weights is not None:
        assert setup.unchanged() == weights

    if case.reported:  # without --strict the same input converts, and the loss is reported
        assert main([*setup.argv[:2], str(tmp_path / "lenient"), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert {q["code"]: q["count"] for q in report["quirks"]}.get(case.reported) == 1


SUBPROCESS_CASES = [name for name, case in CASES.items() if case.subprocess]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_from_a_real_command_line(tmp_path, name):
    """``python -m sam3_lora_kit.cli``: exit 1, one stderr line; ``--debug`` prints the traceback."""
    case = CASES[name]
    setup, file_part = case.build(tmp_path)
    before = snapshot(tmp_path)
    command = [sys.executable, "-m", "sam3_lora_kit.cli"]
    plain = subprocess.run(command + setup.argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert plain.returncode == 1, plain.stderr
    check_message(one_line_error(plain.stderr), file_part, case.problem)
    debug = subprocess.run(command + ["--debug", *setup.argv], capture_output=True, text=True, cwd=REPO,
                           timeout=300)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and case.error in debug.stderr
    assert snapshot(tmp_path) == before and not setup.target.exists()


def test_corpus_covers_issue_8():
    """The corpus is at least 30 cases and holds every kind the issue lists."""
    required = ["json truncated", "json not utf-8", "json top level list", "json missing images",
                "json missing annotations", "json missing categories", "duplicate image id", "duplicate annotation id",
                "annotation of unknown image", "annotation of unknown category", "polygon under 3 points",
                "polygon odd coordinates", "polygon nan", "polygon infinite", "box negative size", "rle wrong size",
                "image missing", "image empty", "image truncated", "image not an image", "file name with ../",
                "file name absolute", "image link outside", "zip entry lands outside", "yolo too few values",
                "yolo unknown class", "yolo outside 0..1", "data.yaml not yaml", "data.yaml without names",
                "voc not xml", "voc size not a number", "empty export", "only a test split", "config unknown key",
                "config wrong type", "adapter for another architecture", "adapter is a pickle"]
    assert not [name for name in required if name not in CASES]
    assert len(CASES) >= 30


# -- safe loading ------------------------------------------------------------------------------------

def test_crafted_pickle_is_refused_without_running(tmp_path):
    """The same code-carrying pickle: refused as an adapter, a base checkpoint and a resume checkpoint; it runs when unpickled."""
    import torch
    from torch import nn

    from sam3_lora_kit.lora import AdapterError, inject_lora, load_adapter
    from sam3_lora_kit.sam3.build import CheckpointError, load_sam3_checkpoint
    from sam3_lora_kit.train.checkpoint import load_checkpoint
    from sam3_lora_kit.train.errors import CheckpointError as TrainCheckpointError

    marker = tmp_path / MARKER
    checkpoint = tmp_path / "sam3.pt"
    torch.save({"weight": torch.zeros(2, 2), "bias": Smuggler(marker)}, checkpoint)
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(pickle.dumps({"lora_A": Smuggler(marker)}))

    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(CheckpointError, match="sam3.pt"):
        load_sam3_checkpoint(model, checkpoint)
    inject_lora(model, target_modules=["0"], rank=1, alpha=1)
    with pytest.raises(AdapterError, match="adapter.safetensors"):
        load_adapter(model, adapter)
    with pytest.raises(TrainCheckpointError, match="sam3.pt"):  # what --resume reads
        load_checkpoint(checkpoint)
    assert not marker.exists()

    # The control: these files really do run code when unpickled the unsafe way.
    torch.load(checkpoint, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    pickle.loads(adapter.read_bytes())
    assert marker.is_dir()
