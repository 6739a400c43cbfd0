"""SAM 3 for the kit: building (tiny/full), LoRA presets, dataset -> BatchedDatapoint, official losses.

Importing this package is light (torch only); ``sam3`` is imported by the functions that need it.
"""
from sam3_lora_kit.sam3.batches import BatchBuilder
from sam3_lora_kit.sam3.build import TINY, CheckpointError, LoadReport, bpe_path, build_sam3, load_sam3_checkpoint
from sam3_lora_kit.sam3.loss import LOSS_WEIGHTS, build_loss, training_step_loss
from sam3_lora_kit.sam3.postprocess import final_outputs, postprocess
from sam3_lora_kit.sam3.presets import DEFAULT_PRESET, LORA_PRESETS, apply_lora, resolve_targets
from sam3_lora_kit.sam3.text_cache import CachedTextEncoder, cache_text_features, restore_text_encoder

__all__ = [
    "BatchBuilder",
    "CachedTextEncoder",
    "CheckpointError",
    "DEFAULT_PRESET",
    "LORA_PRESETS",
    "LOSS_WEIGHTS",
    "LoadReport",
    "TINY",
    "apply_lora",
    "bpe_path",
    "build_loss",
    "build_sam3",
    "cache_text_features",
    "final_outputs",
    "load_sam3_checkpoint",
    "postprocess",
    "resolve_targets",
    "restore_text_encoder",
    "training_step_loss",
]
