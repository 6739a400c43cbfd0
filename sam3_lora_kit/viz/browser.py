"""``MaskBrowser``: browse a dataset's masks (and predictions beside them) with ipywidgets.

The widget only calls ``MaskBrowser.figure``, which calls ``show_masks`` once per panel.
Where no widget can be shown (papermill, nbval, a static renderer) the notebook output
carries one static figure of the first image.
"""
from __future__ import annotations

import io
import re
from pathlib import PurePosixPath
from typing import Any, Sequence

from sam3_lora_kit.viz.masks import show_masks


def _group_predictions(predictions: Any, dataset: Any) -> dict[str, list[dict]]:
    """None, a list of per-image prediction dicts, or {name: list} -> {name: one merged dict per image}."""
    if predictions is None:
        return {}
    if not isinstance(predictions, dict):
        predictions = {"prediction": predictions}
    index_of = {int(info["id"]): i for i, info in enumerate(getattr(dataset, "images", []))}
    grouped: dict[str, list[dict]] = {}
    for name, items in predictions.items():
        per_image: list[list[dict]] = [[] for _ in range(len(dataset))]
        for position, item in enumerate(items):
            if item is None:
                continue
            i = index_of.get(int(item["image_id"]), position) if "image_id" in item else position
            if i < len(per_image):
                per_image[i].append(item)
        grouped[name] = [_merge(parts) for parts in per_image]
    return grouped


def _merge(parts: list[dict]) -> dict:
    """Several prediction dicts of one image (e.g. one per prompt) -> one dict of masks, ids, scores."""
    import numpy as np

    from sam3_lora_kit.viz.masks import to_numpy

    masks, ids, scores = [], [], []
    for part in parts:
        m = to_numpy(part["masks"]).astype(bool)
        m = m.reshape(-1, *m.shape[-2:])
        masks.append(m)
        if "category_ids" in part:
            ids.append(to_numpy(part["category_ids"]).reshape(-1).astype(int))
        else:
            ids.append(np.full(len(m), int(part.get("category_id", 1))))
        scores.append(to_numpy(part["scores"]).reshape(-1) if "scores" in part else np.ones(len(m)))
    if not masks:
        return {"masks": np.zeros((0, 1, 1), bool), "category_ids": np.zeros(0, int), "scores": np.zeros(0)}
    shape = max((m.shape[1:] for m in masks), key=lambda s: s[0] * s[1])
    from sam3_lora_kit.viz.masks import _resize_nearest

    return {"masks": np.concatenate([_resize_nearest(m, *shape) for m in masks]),
            "category_ids": np.concatenate(ids), "scores": np.concatenate(scores)}


def short_file_name(file_name: str, width: int = 30) -> str:
    """``file_name`` short enough for a panel title: Roboflow's ``.rf.<hash>`` dropped
    (``shapes_000_png.rf.9d13...jpg`` -> ``shapes_000_png.jpg``), then the middle elided to ``width``."""
    name = re.sub(r"\.rf\.[0-9a-f]{8,}", "", PurePosixPath(file_name).name)  # COCO names use "/"
    if len(name) <= width:
        return name
    keep = width - 3
    return f"{name[:keep - keep // 2]}...{name[len(name) - keep // 2:]}"


class MaskBrowser:
    """Browse ``dataset`` (items as ``CocoSegmentationDataset`` gives them) with ground truth beside predictions.

    ``predictions``: None, a list of per-image prediction dicts (``masks``, ``scores``,
    ``category_ids`` or ``category_id``, optionally ``image_id``), or a dict name -> such a
    list (e.g. ``{"base": ..., "LoRA": ...}``), shown as extra panels.
    """

    def __init__(self, dataset: Any, predictions: Any = None, score_threshold: float = 0.5) -> None:
        self.dataset = dataset
        self.predictions = _group_predictions(predictions, dataset)
        self.category_names: Sequence[str] = list(getattr(dataset, "category_names", []))
        self.score_threshold = score_threshold

    def figure(self, index: int = 0, classes: Sequence[int] | None = None, alpha: float = 0.5,
               mode: str = "fill", score_threshold: float | None = None) -> Any:
        """One figure: ground truth of image ``index`` and each prediction set beside it."""
        import matplotlib.pyplot as plt

        item = self.dataset[index]
        panels = [("ground truth", item)] + [(name, preds[index]) for name, preds in self.predictions.items()]
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
        threshold = self.score_threshold if score_threshold is None else score_threshold
        for ax, (name, instances) in zip(axes[0], panels):
            show_masks(item["image"], instances, ax=ax, category_names=self.category_names, mode=mode,
                       alpha=alpha, classes=classes, score_threshold=None if instances is item else threshold,
                       title=f"{name}\n{short_file_name(item['file_name'])}")
        fig.tight_layout()
        return fig

    def widget(self) -> Any:
        """The ipywidgets browser: image slider, class toggles, opacity, fill/outline, score threshold."""
        import ipywidgets as widgets
        import matplotlib.pyplot as plt
        from IPython.display import display

        index = widgets.IntSlider(0, 0, max(len(self.dataset) - 1, 0), description="image")
        toggles = [widgets.ToggleButton(value=True, description=name) for name in self.category_names]
        alpha = widgets.FloatSlider(0.5, min=0.0, max=1.0, step=0.05, description="opacity")
        mode = widgets.ToggleButtons(options=["fill", "outline"], value="fill")
        threshold = widgets.FloatSlider(self.score_threshold, min=0.0, max=1.0, step=0.05, description="score")
        out = widgets.Output()

        def redraw(*_: Any) -> None:
            classes = [k for k, t in enumerate(toggles, 1) if t.value]
            with out:
                out.clear_output(wait=True)
                fig = self.figure(index.value, classes, alpha.value, mode.value, threshold.value)
                display(fig)
                plt.close(fig)

        for control in [index, alpha, mode, threshold, *toggles]:
            control.observe(redraw, names="value")
        redraw()
        controls = [index, widgets.HBox([alpha, mode])] + ([threshold] if self.predictions else [])
        return widgets.VBox(controls + [widgets.HBox(toggles), out])

    def static_image(self, index: int = 0) -> bytes:
        """The figure of image ``index`` as JPEG bytes (small; what headless runs show)."""
        import matplotlib.pyplot as plt

        fig = self.figure(index)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="jpeg", dpi=60, pil_kwargs={"quality": 80})
        plt.close(fig)
        return buffer.getvalue()

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        """The widget for live frontends plus a static PNG for headless runs and static renderers."""
        bundle: dict = {"image/jpeg": self.static_image(0), "text/plain": repr(self)}
        try:
            view = self.widget()._repr_mimebundle_(include=include, exclude=exclude)
        except Exception:  # noqa: BLE001 (no ipywidgets or no kernel: the static figure is enough)
            view = None
        if view:
            bundle.update(view)
        return bundle

    def __repr__(self) -> str:
        names = ", ".join(["ground truth", *self.predictions])
        return f"MaskBrowser({len(self.dataset)} images; panels: {names})"
