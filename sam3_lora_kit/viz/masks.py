"""``show_masks``: instance masks over an image with matplotlib (filled or outlined, per-class colours, labels)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor, PIL image or array-like as a NumPy array (on the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def image_hwc(image: Any) -> np.ndarray:
    """Any image (tensor (3, H, W), array (H, W, 3) or (H, W), PIL) as uint8 (H, W, 3)."""
    array = to_numpy(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # (3, H, W) -> (H, W, 3)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    return array[..., :3]


def class_color(category_id: int) -> tuple[float, float, float]:
    """A fixed colour per category id (tab10, id 1 is the first colour)."""
    from matplotlib import colormaps

    return tuple(colormaps["tab10"]((int(category_id) - 1) % 10)[:3])


def _resize_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, h, w) -> (N, H, W) by nearest neighbour (predictions may come at the model's size)."""
    if masks.shape[1:] == (height, width):
        return masks
    rows = (np.arange(height) * masks.shape[1] / height).astype(int)
    cols = (np.arange(width) * masks.shape[2] / width).astype(int)
    return masks[:, rows][:, :, cols]


def overlay(image: np.ndarray, masks: np.ndarray, colors: Sequence[tuple[float, float, float]],
            alpha: float = 0.5, mode: str = "fill") -> np.ndarray:
    """Blend (N, H, W) masks into a uint8 (H, W, 3) image; ``mode`` is ``fill`` or ``outline``."""
    from scipy import ndimage

    out = image.astype(np.float32) / 255.0  # (H, W, 3)
    for mask, color in zip(masks, colors):
        if mode == "outline":
            region = mask & ~ndimage.binary_erosion(mask, iterations=1)
            weight = 1.0
        elif mode == "fill":
            region, weight = mask, alpha
        else:
            raise ValueError(f"mode must be 'fill' or 'outline', got {mode!r}")
        out[region] = (1 - weight) * out[region] + weight * np.asarray(color, dtype=np.float32)
    return (out * 255).round().astype(np.uint8)


def show_masks(image: Any, instances: dict, ax: Any = None, category_names: Sequence[str] | None = None,
               mode: str = "fill", alpha: float = 0.5, classes: Iterable[int] | None = None,
               show_labels: bool = True, show_boxes: bool = False, score_threshold: float | None = None,
               title: str | None = None) -> Any:
    """Draw ``instances`` over ``image`` on ``ax`` (a new figure when None); returns the axes.

    ``instances``: a dict with ``masks`` (N, H, W) and optionally ``category_ids`` (N,),
    ``category_names``, ``boxes`` (N, 4) xyxy and ``scores`` (N,) — a dataset item or a
    prediction. ``classes``: category ids to show (all when None).
    """
    import matplotlib.pyplot as plt

    rgb = image_hwc(image)
    height, width = rgb.shape[:2]
    masks = to_numpy(instances["masks"]).astype(bool) if "masks" in instances else np.zeros((0, height, width), bool)
    masks = _resize_nearest(masks.reshape(-1, *masks.shape[-2:]), height, width)  # (N, H, W)
    n = len(masks)
    ids = to_numpy(instances.get("category_ids", [instances.get("category_id", 1)] * n)).reshape(-1).astype(int)
    names = list(instances.get("category_names") or [
        category_names[i - 1] if category_names and 0 < i <= len(category_names) else str(i) for i in ids])
    scores = to_numpy(instances["scores"]).reshape(-1) if "scores" in instances else None
    keep = np.ones(n, dtype=bool)
    if classes is not None:
        keep &= np.isin(ids, list(classes))
    if scores is not None and score_threshold is not None:
        keep &= scores >= score_threshold
    chosen = np.flatnonzero(keep)
    colors = [class_color(ids[i]) for i in chosen]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5 * height / max(width, 1)))
    ax.imshow(overlay(rgb, masks[chosen], colors, alpha=alpha, mode=mode))
    boxes = to_numpy(instances["boxes"]).reshape(-1, 4) if "boxes" in instances else None
    for i, color in zip(chosen, colors):
        ys, xs = np.nonzero(masks[i])
        if show_boxes and boxes is not None:
            x0, y0, x1, y1 = boxes[i]
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=color, linewidth=1))
        if show_labels and len(xs):
            label = names[i] if scores is None else f"{names[i]} {scores[i]:.2f}"
            ax.text(xs.min(), ys.min(), label, fontsize=7, color="white", va="bottom",
                    bbox={"facecolor": color, "alpha": 0.8, "pad": 1, "linewidth": 0})
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=9)
    return ax
