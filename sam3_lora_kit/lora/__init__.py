"""The course's LoRA core, independent of SAM 3: layers, injection and its report, adapter files."""
from sam3_lora_kit.lora.adapter import AdapterError, architecture_fingerprint, load_adapter, read_adapter_metadata, save_adapter
from sam3_lora_kit.lora.attention import EfficientMultiheadAttention, blockwise_attention, use_efficient_attention
from sam3_lora_kit.lora.inject import (
    LoRAReport,
    count_parameters,
    inject_lora,
    iter_lora_layers,
    lora_state_dict,
    merge_lora,
    name_matches,
    unload_lora,
    unmerge_lora,
)
from sam3_lora_kit.lora.layers import LoRALayer, LoRALinear, LoRAMultiheadAttention
from sam3_lora_kit.lora.storage import (
    StorageReport,
    restore_frozen_weights,
    saving_stored_weights,
    store_frozen_weights,
    stored_parameter_names,
)

__all__ = [
    "AdapterError",
    "EfficientMultiheadAttention",
    "LoRALayer",
    "LoRALinear",
    "LoRAMultiheadAttention",
    "LoRAReport",
    "StorageReport",
    "architecture_fingerprint",
    "blockwise_attention",
    "count_parameters",
    "inject_lora",
    "iter_lora_layers",
    "load_adapter",
    "lora_state_dict",
    "merge_lora",
    "name_matches",
    "read_adapter_metadata",
    "restore_frozen_weights",
    "save_adapter",
    "saving_stored_weights",
    "store_frozen_weights",
    "stored_parameter_names",
    "unload_lora",
    "unmerge_lora",
    "use_efficient_attention",
]
