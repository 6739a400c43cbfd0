"""Roboflow exports -> clean COCO: readers, converter, doctor, dataset and sample data.

Names are imported on first use, so ``import sam3_lora_kit.data`` costs nothing.
"""
from __future__ import annotations

from sam3_lora_kit._lazy import lazy_exports

_EXPORTS = {
    "DataError": "sam3_lora_kit.data.errors",
    "convert_roboflow": "sam3_lora_kit.data.convert",
    "ConversionReport": "sam3_lora_kit.data.report",
    "DatasetReport": "sam3_lora_kit.data.report",
    "SplitStats": "sam3_lora_kit.data.report",
    "inspect_dataset": "sam3_lora_kit.data.doctor",
    "detect_format": "sam3_lora_kit.data.readers",
    "CocoSegmentationDataset": "sam3_lora_kit.data.dataset",
    "make_sample_dataset": "sam3_lora_kit.data.sample",
    "sample_data_dir": "sam3_lora_kit.data.sample",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
