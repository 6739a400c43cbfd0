"""show_masks and MaskBrowser: colours land on the masked pixels only; panels for each prediction set."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sam3_lora_kit.viz import MaskBrowser, class_color, show_masks  # noqa: E402
from sam3_lora_kit.viz.masks import overlay  # noqa: E402


def instances():
    masks = torch.zeros((2, 20, 30), dtype=torch.bool)
    masks[0, 2:8, 2:10] = True
    masks[1, 10:18, 15:28] = True
    return {"masks": masks, "category_ids": torch.tensor([1, 2]), "category_names": ["cat", "dog"],
            "boxes": torch.tensor([[2.0, 2, 10, 8], [15, 10, 28, 18]]), "scores": torch.tensor([0.9, 0.2])}


@pytest.mark.parametrize("mode", ["fill", "outline"])
def test_overlay_touches_masked_pixels_only(mode):
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    masks = instances()["masks"].numpy()
    out = overlay(image, masks, [class_color(1), class_color(2)], alpha=1.0, mode=mode)
    changed = out.any(axis=2)
    assert not changed[~masks.any(0)].any()
    assert changed[2, 2] and changed[10, 15]
    assert changed[5, 5] == (mode == "fill")  # inside the first mask: filled, or left for an outline
    assert tuple(out[2, 2] / 255) == pytest.approx(class_color(1), abs=0.01)


@pytest.mark.parametrize("kwargs,labels", [({}, ["cat 0.90", "dog 0.20"]), ({"classes": [2]}, ["dog 0.20"]),
                                           ({"score_threshold": 0.5}, ["cat 0.90"])])
def test_show_masks_filters(kwargs, labels):
    image = torch.zeros((3, 20, 30), dtype=torch.uint8)
    ax = show_masks(image, instances(), **kwargs)
    assert [t.get_text() for t in ax.texts] == labels
    plt.close(ax.figure)


def test_browser_panels_and_static_figure(tmp_path):
    item = {"image": torch.zeros((3, 20, 30), dtype=torch.uint8), "file_name": "a.jpg", **instances()}
    dataset = [item, item]
    preds = [{"masks": instances()["masks"][:1], "scores": torch.tensor([0.8]), "category_id": 1}] * 2
    browser = MaskBrowser(dataset, {"base": preds, "LoRA": preds})
    fig = browser.figure(1)
    assert [ax.get_title().split("\n") for ax in fig.axes] == [["ground truth", "a.jpg"], ["base", "a.jpg"], ["LoRA", "a.jpg"]]
    plt.close(fig)
    bundle = browser._repr_mimebundle_()
    assert bundle["image/jpeg"][:2] == b"\xff\xd8"


@pytest.mark.parametrize("file_name,expected", [
    ("shapes_000_png.rf.9d132f4c0a1b2c3d4e5f60718293a4b5.jpg", "shapes_000_png.jpg"),  # Roboflow's hash dropped
    ("train/a.jpg", "a.jpg"),
    ("a_very_long_file_name_from_a_phone_camera_2024_06_01.jpeg", "a_very_long_fi...24_06_01.jpeg"),
])
def test_panel_titles_shorten_file_names(file_name, expected):
    from sam3_lora_kit.viz.browser import short_file_name

    assert short_file_name(file_name) == expected and len(short_file_name(file_name)) <= 30

