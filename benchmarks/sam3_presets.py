"""Full-size SAM 3: build time, parameter counts per part, trainable percent per LoRA preset, adapter size.

Run: ``python benchmarks/sam3_presets.py [rank] [alpha]``; writes ``benchmarks/results/sam3_presets.json``.
Builds the full model once on the CPU (about 4 GB of RAM); adds and removes each preset in turn.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from sam3_lora_kit.lora import iter_lora_layers, save_adapter
from sam3_lora_kit.sam3 import DEFAULT_PRESET, LORA_PRESETS, apply_lora, build_sam3


def remove_lora(model: torch.nn.Module) -> None:
    """Put every wrapped module's ``base_layer`` back (innermost first: an attention wrapper holds a LoRA out_proj)."""
    for name, layer in reversed(list(iter_lora_layers(model))):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.base_layer)


def main(rank: int = 8, alpha: float = 16.0) -> dict:
    start = time.perf_counter()
    model = build_sam3("full", device="cpu")
    result: dict = {"build_s": round(time.perf_counter() - start, 1), "rank": rank, "alpha": alpha,
                    "torch": torch.__version__, "machine": platform.machine()}
    result["params"] = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
    result["params"]["vision"] = sum(p.numel() for p in model.backbone.vision_backbone.parameters())
    result["params"]["text"] = sum(p.numel() for p in model.backbone.language_backbone.parameters())
    result["params"]["total"] = sum(p.numel() for p in model.parameters())
    result["presets"] = {}
    for qkv in ("fused", "split"):
        for preset in LORA_PRESETS:
            report = apply_lora(model, preset, rank=rank, alpha=alpha, qkv=qkv)
            row = {"layers": len(report.layers), "trainable": report.trainable, "percent": round(report.percent, 4)}
            if preset == DEFAULT_PRESET:
                with tempfile.TemporaryDirectory() as tmp:
                    path = save_adapter(model, Path(tmp) / "adapter.safetensors", preset=preset)
                    row["adapter_mb"] = round(path.stat().st_size / 2**20, 2)
            result["presets"][f"{preset}/{qkv}"] = row
            remove_lora(model)
    return result


if __name__ == "__main__":
    args = sys.argv[1:]
    out = main(int(args[0]) if args else 8, float(args[1]) if len(args) > 1 else 16.0)
    target = Path(__file__).parent / "results" / "sam3_presets.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
