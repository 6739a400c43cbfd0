"""sam3-lora-kit: LoRA fine-tuning of Meta's SAM 3 on Roboflow datasets, for notebooks and the command line."""
from __future__ import annotations

__version__ = "0.1.0"

from sam3_lora_kit.lora import (  # noqa: E402  (the LoRA core is light: torch only)
    LoRALinear,
    LoRAMultiheadAttention,
    LoRAReport,
    inject_lora,
    load_adapter,
    lora_state_dict,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from sam3_lora_kit.runtime import pick_device, set_seed  # noqa: E402

__all__ = [
    "LoRALinear",
    "LoRAMultiheadAttention",
    "LoRAReport",
    "inject_lora",
    "load_adapter",
    "lora_state_dict",
    "merge_lora",
    "pick_device",
    "save_adapter",
    "set_seed",
    "unmerge_lora",
]
