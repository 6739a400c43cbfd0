"""Pictures of masks: ``show_masks`` draws one overlay; ``MaskBrowser`` is a thin widget over it."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "show_masks": "sam3_lora_kit.viz.masks",
    "class_color": "sam3_lora_kit.viz.masks",
    "MaskBrowser": "sam3_lora_kit.viz.browser",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
