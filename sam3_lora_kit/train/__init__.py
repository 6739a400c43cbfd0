"""Training: the config (dataclass <-> YAML), the loop, checkpoints, metrics and the run summary.

``train(config)`` fine-tunes SAM 3 with LoRA; ``fit(model, batch_fn, loss_fn, config, ...)`` is
the same loop for any model. Names are imported on first use, so ``import sam3_lora_kit.train``
costs nothing.
"""
from __future__ import annotations

from sam3_lora_kit._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "sam3_lora_kit.train.config",
    "ConfigError": "sam3_lora_kit.train.config",
    "train": "sam3_lora_kit.train.trainer",
    "fit": "sam3_lora_kit.train.loop",
    "TrainResult": "sam3_lora_kit.train.loop",
    "write_run_summary": "sam3_lora_kit.train.metrics",
    "read_run_summary": "sam3_lora_kit.train.metrics",
    "read_metrics": "sam3_lora_kit.train.metrics",
    "load_checkpoint": "sam3_lora_kit.train.checkpoint",
    "list_checkpoints": "sam3_lora_kit.train.checkpoint",
    "TrainError": "sam3_lora_kit.train.errors",
    "CheckpointError": "sam3_lora_kit.train.errors",
    "OutputDirError": "sam3_lora_kit.train.errors",
    "NonFiniteLossError": "sam3_lora_kit.train.errors",
    "TrainOutOfMemoryError": "sam3_lora_kit.train.errors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
