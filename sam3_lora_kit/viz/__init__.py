"""Pictures: ``show_masks`` draws one mask overlay, ``MaskBrowser`` is a thin widget over it, ``plot_training_curves`` draws a run's metrics."""
from __future__ import annotations

from sam3_lora_kit._lazy import lazy_exports

_EXPORTS = {
    "show_masks": "sam3_lora_kit.viz.masks",
    "class_color": "sam3_lora_kit.viz.masks",
    "MaskBrowser": "sam3_lora_kit.viz.browser",
    "plot_training_curves": "sam3_lora_kit.viz.curves",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
