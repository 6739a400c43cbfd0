"""sam3-lora-kit: LoRA fine-tuning of Meta's SAM 3 on Roboflow datasets, for notebooks and the command line.

The public names below are imported on first use (PEP 562), so ``import sam3_lora_kit`` and the
data-only commands (``sam3-lora convert``/``inspect``) never load torch.
"""
from __future__ import annotations

from sam3_lora_kit._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "LoRALinear": "sam3_lora_kit.lora",
    "LoRAMultiheadAttention": "sam3_lora_kit.lora",
    "LoRAReport": "sam3_lora_kit.lora",
    "inject_lora": "sam3_lora_kit.lora",
    "load_adapter": "sam3_lora_kit.lora",
    "lora_state_dict": "sam3_lora_kit.lora",
    "merge_lora": "sam3_lora_kit.lora",
    "save_adapter": "sam3_lora_kit.lora",
    "unload_lora": "sam3_lora_kit.lora",
    "unmerge_lora": "sam3_lora_kit.lora",
    "pick_device": "sam3_lora_kit.runtime",
    "set_seed": "sam3_lora_kit.runtime",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
