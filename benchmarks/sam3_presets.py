"""Adapter size and parameter share of each LoRA preset, against the full checkpoint size.

Builds SAM 3 once (full size, randomly initialised, about 4 GB of RAM; the tiny model in
``--quick``), adds each preset in turn (``qkv`` fused and split), records the LoRA layers,
trainable parameters and their share, writes the adapter file (``save_adapter``) to measure
its size, and removes the preset again. The full checkpoint size is the model's parameters
and buffers in fp32 (what ``sam3.pt`` holds), computed rather than written.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import Settings, markdown_table

NAME = "sam3_presets"
TITLE = "LoRA presets on SAM 3: adapter size and trainable share"
# What the figures depend on (besides the shared timing code): see benchmarks/provenance.py.
SOURCES = ("sam3_lora_kit/lora", "sam3_lora_kit/sam3", "benchmarks/sam3_presets.py")


def available() -> str | None:
    try:
        import sam3  # noqa: F401
    except ImportError:
        return "sam3 is not installed"
    return None


def remove_lora(model) -> None:
    """Put every wrapped module's ``base_layer`` back (innermost first: an attention wrapper holds a LoRA out_proj)."""
    from sam3_lora_kit.lora import iter_lora_layers

    for name, layer in reversed(list(iter_lora_layers(model))):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.base_layer)


def run(settings: Settings, log=print, rank: int = 8, alpha: float = 16.0) -> dict:
    from sam3_lora_kit.lora import save_adapter
    from sam3_lora_kit.sam3 import DEFAULT_PRESET, LORA_PRESETS, apply_lora, build_sam3

    size = "tiny" if settings.quick else "full"
    began = time.perf_counter()
    model = build_sam3(size, device="cpu")
    build_s = time.perf_counter() - began
    params = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
    params["vision"] = sum(p.numel() for p in model.backbone.vision_backbone.parameters())
    params["text"] = sum(p.numel() for p in model.backbone.language_backbone.parameters())
    params["total"] = sum(p.numel() for p in model.parameters())
    checkpoint_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    presets = {}
    for qkv in ("fused", "split"):
        for preset in LORA_PRESETS:
            report = apply_lora(model, preset, rank=rank, alpha=alpha, qkv=qkv)
            with tempfile.TemporaryDirectory() as tmp:
                path = save_adapter(model, Path(tmp) / "adapter.safetensors", preset=preset)
                adapter_bytes = path.stat().st_size
            presets[f"{preset}/{qkv}"] = {"preset": preset, "qkv": qkv, "default": preset == DEFAULT_PRESET,
                                          "layers": len(report.layers), "trainable": report.trainable,
                                          "total": report.total, "percent": report.percent,
                                          "adapter_bytes": adapter_bytes,
                                          "adapter_over_checkpoint": adapter_bytes / checkpoint_bytes}
            log(f"  {preset}/{qkv}: {len(report.layers)} layers, {report.trainable:,} trainable "
                f"({report.percent:.3f} %), adapter {adapter_bytes / 2**20:.2f} MiB")
            remove_lora(model)
    return {"parameters": {"size": size, "rank": rank, "alpha": alpha, "dtype": "float32"}, "build_s": build_s,
            "params": params, "checkpoint_bytes": checkpoint_bytes, "presets": presets}


def report(result: dict, out_dir) -> str:
    body = result["result"]
    ckpt = body["checkpoint_bytes"]
    rows = [[row["preset"] + (" (default)" if row["default"] else ""), row["qkv"], row["layers"], f"{row['trainable']:,}",
             f"{row['percent']:.3f}", f"{row['adapter_bytes'] / 2**20:.2f}", f"{100 * row['adapter_over_checkpoint']:.3f}"]
            for row in body["presets"].values()]
    parts = ", ".join(f"{name} {count / 1e6:.1f} M" for name, count in body["params"].items() if count)
    return "\n".join([
        f"## {TITLE}", "",
        f"SAM 3 {body['parameters']['size']} (random init), rank {body['parameters']['rank']}, alpha "
        f"{body['parameters']['alpha']}. Full checkpoint (parameters and buffers, fp32): {ckpt / 2**20:,.0f} MiB "
        f"({ckpt / 2**30:.2f} GiB). Parameters: {parts}.", "",
        markdown_table(["preset", "qkv", "LoRA layers", "trainable", "trainable %", "adapter MiB", "adapter / checkpoint %"], rows),
    ])
