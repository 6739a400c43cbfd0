"""The converter's fast paths give exactly what the slow ones gave: JPEG header check, box area, streamed JSON, file walks."""
from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_fixtures import write_image, write_voc_export
from sam3_lora_kit.data.clean import CleanImage
from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.geometry import box_area, box_polygon
from sam3_lora_kit.data.images import _decode, read_image
from sam3_lora_kit.data.jpeg import jpeg_size
from sam3_lora_kit.data.paths import IMAGE_SUFFIXES, check_no_escaping_links, check_relative_name, is_inside, list_images
from sam3_lora_kit.data.writer import SplitWriter

ENCODINGS = {  # Pillow save options -> does the header check decide alone (True) or hand over to Pillow (False)?
    "baseline": ({}, True),
    "grey": ({"mode": "L"}, True),
    "4:4:4": ({"subsampling": 0}, True),
    "4:2:2": ({"subsampling": 1}, True),
    "optimized tables": ({"optimize": True}, True),
    "restart markers": ({"restart_marker_blocks": 2}, True),
    "icc profile": ({"icc_profile": b"p" * 200}, True),
    "comment": ({"comment": b"hello"}, True),
    "progressive": ({"progressive": True}, False),
    "cmyk": ({"mode": "CMYK"}, False),
    "exif": ({"exif": b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"}, False),
}


def encode(options: dict, width: int = 37, height: int = 29) -> bytes:
    options = dict(options)
    mode = options.pop("mode", "RGB")
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, "JPEG", **options)
    return out.getvalue()


def pillow_size(data: bytes) -> tuple[int, int] | str:
    """What the slow path concludes: the size, or the kind of error (decoded at 1/8 scale like ``images``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
                if image.format == "JPEG":
                    image.draft(image.mode, (max(size[0] // 8, 1), max(size[1] // 8, 1)))
                image.load()
        return size
    except Exception as error:  # noqa: BLE001
        return type(error).__name__


def mutations(data: bytes, seed: int) -> list[bytes]:
    """Truncations (with and without an EOI after them), byte changes all over and in the header, junk after the end."""
    rng = random.Random(seed)
    header_end = data.find(b"\xff\xda") + 16
    cuts = [rng.randrange(1, len(data)) for _ in range(40)]
    out = [data[:cut] for cut in cuts] + [data[:cut] + b"\xff\xd9" for cut in cuts]
    for limit in (len(data), header_end, header_end):
        for _ in range(80):
            changed = bytearray(data)
            changed[rng.randrange(limit)] = rng.randrange(256)
            out.append(bytes(changed))
    return out + [data + b"junk", data + b"\xff\xd9", data[:-2], data[2:]]


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_jpeg_header_check_agrees_with_pillow(name):
    """Whenever the header check gives a size, Pillow opens and decodes the file with that size."""
    options, decided = ENCODINGS[name]
    data = encode(options)
    assert (jpeg_size(data) == (37, 29)) is decided
    for index, mutated in enumerate(mutations(data, seed=len(name))):
        size = jpeg_size(mutated)
        if size is not None:
            assert pillow_size(mutated) == size, f"mutation {index}"


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[: len(d) // 2], "does not decode (image file is truncated"),
    (lambda d: d[:-2], "does not decode (image file is truncated"),
    (lambda d: d[:-1], "does not decode (image file is truncated"),
    (lambda d: d[:20], "not an image"),
    (lambda d: b"", "image file is empty"),
    (lambda d: b"\xff\xd8\xff" + b"\x00" * 40, "not an image"),
    (lambda d: b"not an image at all", "not an image"),
])
def test_damaged_jpeg_reported_as_by_pillow(tmp_path, damage, message):
    """A damaged file fails with Pillow's own message, the one the Pillow-only check (``_decode``) gives."""
    path = tmp_path / "a.jpg"
    path.write_bytes(damage(encode({})))
    with pytest.raises(DataError, match=re.escape(message)) as error:
        read_image(path)
    with pytest.raises(DataError) as reference:
        _decode(path, path.read_bytes())
    assert str(error.value) == str(reference.value)


def test_plain_jpeg_read_without_pillow_and_png_with_it(tmp_path):
    jpeg, png = write_image(tmp_path / "a.jpg", 40, 30), write_image(tmp_path / "b.png", 20, 10)
    assert jpeg_size(jpeg.read_bytes()) == (40, 30)
    assert jpeg_size(png.read_bytes()) is None
    assert (read_image(jpeg).width, read_image(jpeg).height) == (40, 30)
    assert (read_image(png).width, read_image(png).height) == (20, 10)


def pycocotools_area(box: tuple[float, float, float, float], width: int, height: int) -> int:
    rles = mask_utils.frPyObjects([box_polygon(*box)], height, width)
    return int(mask_utils.area(mask_utils.merge(rles)))


BOXES = [  # (x, y, w, h), width, height: edges on and between pixel and sub-pixel (1/5) boundaries
    ((0.0, 0.0, 64.0, 48.0), 64, 48), ((0.0, 0.0, 0.1, 0.1), 64, 48), ((0.0, 0.0, 0.5, 0.5), 64, 48),
    ((10.0, 10.0, 20.0, 10.0), 64, 48), ((9.5, 9.5, 1.0, 1.0), 64, 48), ((0.3, 0.7, 0.4, 0.4), 64, 48),
    ((63.0, 47.0, 1.0, 1.0), 64, 48), ((63.9, 47.9, 0.1, 0.1), 64, 48), ((0.0, 0.0, 1.0, 1.0), 1, 1),
    ((0.2, 0.2, 0.2, 0.2), 3, 3), ((0.299, 0.299, 0.402, 0.402), 3, 3), ((5.0, 5.0, 1e-9, 3.0), 10, 10),
    ((15.5, 68.5, 33.0, 28.0), 160, 160), ((100.25, 3.75, 200.5, 400.125), 640, 480),
]


@pytest.mark.parametrize("box, width, height", BOXES)
def test_box_area_is_pycocotools_raster(box, width, height):
    assert box_area(*box, width, height) == pycocotools_area(box, width, height)


def test_box_area_random_boxes():
    rng = random.Random(0)
    for _ in range(3000):
        width, height = rng.choice([1, 2, 7, 160, 640]), rng.choice([1, 3, 160, 480])
        x0, x1 = sorted(rng.choice([rng.uniform(0, width), rng.randrange(5 * width + 1) / 5]) for _ in range(2))
        y0, y1 = sorted(rng.choice([rng.uniform(0, height), rng.randrange(2 * height + 1) / 2]) for _ in range(2))
        if x1 > x0 and y1 > y0:
            box = (x0, y0, x1 - x0, y1 - y0)
            assert box_area(*box, width, height) == pycocotools_area(box, width, height), (box, width, height)


def test_streamed_annotations_equal_one_json_dump(tmp_path):
    images = [CleanImage("a.jpg", 64, 48, [{"category": "dog", "segmentation": [[1.5, 2.0, 9.0, 2.0, 9.0, 8.25]],
                                             "bbox": [1.5, 2.0, 7.5, 6.25], "area": 40, "iscrowd": 0},
                                            {"category": "cat", "segmentation": {"size": [48, 64], "counts": "ab"},
                                             "bbox": [0.0, 0.0, 1.0, 1.0], "area": 1, "iscrowd": 1}], data=b"x"),
              CleanImage("b.jpg", 32, 32, [], data=b"y"),
              CleanImage("c.jpg", 16, 8, [{"category": "cat", "segmentation": [[0, 0, 4, 0, 4, 4]],
                                           "bbox": [0, 0, 4, 4], "area": 8, "iscrowd": 0}], data=b"z")]
    expected = {"info": {"description": "converted by sam3-lora-kit"}, "images": [], "annotations": [],
                "categories": [{"id": 1, "name": "cat", "supercategory": "object"},
                               {"id": 2, "name": "dog", "supercategory": "object"}]}
    for image_id, image in enumerate(images, 1):
        expected["images"].append({"id": image_id, "file_name": image.file_name, "width": image.width,
                                   "height": image.height})
        for ann in image.annotations:
            coco = {"id": len(expected["annotations"]) + 1, "image_id": image_id, **ann}
            coco["category_id"] = {"cat": 1, "dog": 2}[coco.pop("category")]
            expected["annotations"].append(coco)
    with SplitWriter(tmp_path / "train", ["cat", "dog"]) as writer:
        for image in images:
            writer.add(tmp_path / image.file_name, image)
        path = writer.finish()
    assert path.read_bytes() == json.dumps(expected, separators=(",", ":")).encode()
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["_annotations.coco.json", "a.jpg", "b.jpg", "c.jpg"]
    assert (tmp_path / "train" / "c.jpg").read_bytes() == b"z"


def test_writer_raises_a_file_error_and_stops(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jpg").mkdir()  # a folder where the image must go
    with pytest.raises(IsADirectoryError):
        with SplitWriter(tmp_path / "train", ["cat"]) as writer:
            writer.add(tmp_path / "a.jpg", CleanImage("a.jpg", 4, 4, [], data=b"x"))
            writer.finish()


def walk_reference(root: Path) -> None:
    """The walk ``check_no_escaping_links`` replaced (os.walk order)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path.is_symlink() and not is_inside(path, root):
                raise DataError(path, f"link pointing outside the export ({os.readlink(path)})")


def test_escaping_link_found_first_in_walk_order(tmp_path):
    outside = write_image(tmp_path / "secret.jpg")
    root = tmp_path / "export"
    for folder in ("train/x", "train/y/z", "valid", "b"):
        (root / folder).mkdir(parents=True)
    for link in ("train/y/z/l1.jpg", "train/x/l2.jpg", "valid/l3.jpg", "b/l4.jpg", "train/l5.jpg"):
        os.symlink(outside, root / link)
    os.symlink(tmp_path, root / "train" / "up")  # a link to a folder outside: reported, never followed
    os.symlink(root / "valid", root / "inside")  # a link inside: fine, not followed
    found = []
    while True:
        with pytest.raises(DataError) as new:
            check_no_escaping_links(root)
        with pytest.raises(DataError) as old:
            walk_reference(root)
        assert str(new.value) == str(old.value)
        found.append(new.value.path)
        Path(new.value.path).unlink()
        if len(found) == 6:
            break
    check_no_escaping_links(root)
    assert len(set(found)) == 6


def test_list_images_matches_path_rules(tmp_path):
    for name in ("b.jpg", "a.JPG", "..jpg", ".jpg", "c.jpg.", "d.png", "e.txt", "f.tiff", "Z.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()
    os.symlink(tmp_path / "b.jpg", tmp_path / "link.jpg")
    os.symlink(tmp_path / "nothing.jpg", tmp_path / "broken.jpg")
    expected = sorted(p for p in tmp_path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    assert list_images(tmp_path) == expected
    assert [p.name for p in expected] == ["..jpg", "Z.jpeg", "a.JPG", "b.jpg", "d.png", "f.tiff", "link.jpg"]


@pytest.mark.parametrize("name, clean", [("a.jpg", "a.jpg"), (" a b.jpg ", " a b.jpg "), (".", "."), ("./a.jpg", "a.jpg"),
                                         ("x/./a.jpg", "x/a.jpg"), ("x\\a.jpg", "x/a.jpg"), ("x//a.jpg", "x/a.jpg"),
                                         ("...", "...")])
def test_relative_names(name, clean):
    assert check_relative_name(name, "w") == clean


@pytest.mark.parametrize("name", ["..", "../a.jpg", "/a.jpg", "C:a.jpg", "a:b", "\\\\server\\a.jpg", "a\x00.jpg", " "])
def test_relative_names_refused(name):
    with pytest.raises(DataError):
        check_relative_name(name, "w")


def test_voc_convert_loads_no_array_or_model_library(tmp_path):
    """A VOC export of plain JPEGs converts without NumPy, Pillow, pycocotools, torch or matplotlib."""
    src = write_voc_export(tmp_path / "export")
    code = ("import sys\nfrom sam3_lora_kit.cli import main\n"
            f"assert main(['convert', {str(src)!r}, {str(tmp_path / 'out')!r}]) == 0\n"
            "loaded = sorted(m for m in ('numpy', 'PIL', 'pycocotools', 'torch', 'matplotlib') if m in sys.modules)\n"
            "print('loaded:', loaded)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent)
    assert run.returncode == 0, run.stderr
    assert "loaded: []" in run.stdout
