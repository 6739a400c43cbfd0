"""CocoSegmentationDataset: the interface SAM 3 training reads."""
from __future__ import annotations

import pytest
import torch

from data_fixtures import fail_os_link, write_coco_export, write_masks_export
from sam3_lora_kit.data import CocoSegmentationDataset, DataError, convert_roboflow


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    convert_roboflow(write_coco_export(tmp / "export"), tmp / "out")
    return tmp / "out"


@pytest.mark.parametrize("image_size", [None, 32])
def test_items_follow_the_interface(coco_root, image_size):
    ds = CocoSegmentationDataset(coco_root, "train", image_size=image_size)
    assert len(ds) == 3 and ds.categories == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert ds.category_names == ["cat", "dog"] and ds.coco_path.name == "_annotations.coco.json"
    for i in range(len(ds)):
        item = ds[i]
        image = item["image"]
        assert image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3
        h, w = image.shape[1:]
        if image_size:
            assert (h, w) == (image_size, image_size)
        n = len(item["category_ids"])
        assert item["masks"].dtype == torch.bool and item["masks"].shape == (n, h, w)
        assert item["boxes"].dtype == torch.float32 and item["boxes"].shape == (n, 4)
        assert item["category_ids"].dtype == torch.int64 and len(item["category_names"]) == n
        assert isinstance(item["image_id"], int) and isinstance(item["file_name"], str)
        for mask, box in zip(item["masks"], item["boxes"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert len(xs) > 0
            assert box[0] - 1 <= xs.min() and xs.max() <= box[2] + 1
            assert box[1] - 1 <= ys.min() and ys.max() <= box[3] + 1


def test_first_item_values(coco_root):
    item = CocoSegmentationDataset(coco_root, "train")[0]
    assert item["file_name"] == "a.jpg" and item["category_names"] == ["cat", "cat", "cat"]
    assert item["boxes"][0].tolist() == [10, 10, 30, 20]
    assert int(item["masks"][0].sum()) == 200


def test_resize_scales_boxes(coco_root):
    full = CocoSegmentationDataset(coco_root, "train")[0]
    small = CocoSegmentationDataset(coco_root, "train", image_size=32)[0]
    h, w = full["image"].shape[1:]
    scale = torch.tensor([32 / w, 32 / h, 32 / w, 32 / h])
    assert torch.allclose(small["boxes"], full["boxes"] * scale)


def test_transforms_applied_last(coco_root):
    ds = CocoSegmentationDataset(coco_root, "train", transforms=lambda item: {**item, "seen": True})
    assert ds[0]["seen"] is True


def test_rle_masks_decode(tmp_path):
    convert_roboflow(write_masks_export(tmp_path / "export"), tmp_path / "out")
    item = CocoSegmentationDataset(tmp_path / "out", "train")[0]
    assert sorted(int(m.sum()) for m in item["masks"]) == [32, 48, 150]


def test_missing_split_names_file(tmp_path):
    with pytest.raises(DataError, match="_annotations.coco.json: missing"):
        CocoSegmentationDataset(tmp_path, "train")


@pytest.mark.parametrize("links", ["hard", "symbolic"])
@pytest.mark.parametrize("writer", ["coco", "voc"])
def test_linked_output_loads_like_the_copy(tmp_path, writer, links, monkeypatch):
    """``convert --link`` output (links to the source images) loads, item for item equal to the copy."""
    import errno
    import os

    from data_fixtures import write_voc_export

    src = {"coco": write_coco_export, "voc": write_voc_export}[writer](tmp_path / "export")
    convert_roboflow(src, tmp_path / "copied")
    if links == "symbolic":  # what --link writes where hard links fail (another file system)
        fail_os_link(monkeypatch, errno.EXDEV)
    convert_roboflow(src, tmp_path / "linked", link=True)
    for split in ("train", "valid", "test"):
        if not (tmp_path / "copied" / split).is_dir():
            continue
        copied = CocoSegmentationDataset(tmp_path / "copied", split)
        linked = CocoSegmentationDataset(tmp_path / "linked", split)
        assert len(linked) == len(copied) > 0
        for i in range(len(linked)):
            image = tmp_path / "linked" / split / linked.images[i]["file_name"]
            assert image.is_symlink() == (links == "symbolic")
            assert os.path.samefile(image, src / split / linked.images[i]["file_name"])
            a, b = linked[i], copied[i]
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], torch.Tensor):
                    assert torch.equal(a[key], b[key]), key
                else:
                    assert a[key] == b[key], key


def test_dataset_refuses_a_folder_link_leaving_it(tmp_path):
    """The file itself may be a link (what ``--link`` writes); a folder on the way that leaves the split may not."""
    import json
    import os

    convert_roboflow(write_coco_export(tmp_path / "export"), tmp_path / "out")
    train = tmp_path / "out" / "train"
    (tmp_path / "elsewhere").mkdir()
    (train / "a.jpg").rename(tmp_path / "elsewhere" / "a.jpg")
    os.symlink(tmp_path / "elsewhere", train / "sub")
    doc = json.loads((train / "_annotations.coco.json").read_text())
    doc["images"][0]["file_name"] = "sub/a.jpg"
    (train / "_annotations.coco.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="pointing outside"):
        CocoSegmentationDataset(tmp_path / "out", "train")[0]
