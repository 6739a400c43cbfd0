"""Evaluation and inference: COCO mAP (segm, bbox; overall and per class), prompt discrimination, ``predict``.

Names are imported on first use, so ``import sam3_lora_kit.evaluate`` costs nothing.
"""
from __future__ import annotations

from sam3_lora_kit._lazy import lazy_exports

_EXPORTS = {
    "evaluate_coco": "sam3_lora_kit.evaluate.run",
    "iter_predictions": "sam3_lora_kit.evaluate.run",
    "load_image": "sam3_lora_kit.evaluate.run",
    "load_model": "sam3_lora_kit.evaluate.run",
    "predict": "sam3_lora_kit.evaluate.run",
    "before_after_fields": "sam3_lora_kit.evaluate.coco",
    "coco_ground_truth": "sam3_lora_kit.evaluate.coco",
    "coco_map": "sam3_lora_kit.evaluate.coco",
    "format_metrics": "sam3_lora_kit.evaluate.coco",
    "predictions_to_coco_results": "sam3_lora_kit.evaluate.coco",
    "prompt_discrimination": "sam3_lora_kit.evaluate.coco",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
