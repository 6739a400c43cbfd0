"""Pictures: ``show_masks`` draws one mask overlay, ``MaskBrowser`` is a thin widget over it, ``plot_training_curves`` draws a run's metrics."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "show_masks": "sam3_lora_kit.viz.masks",
    "class_color": "sam3_lora_kit.viz.masks",
    "MaskBrowser": "sam3_lora_kit.viz.browser",
    "plot_training_curves": "sam3_lora_kit.viz.curves",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
