"""Where the activation memory of a LoRA training step goes, module by module.

One forward of the default configuration (preset ``all-attn``, rank 8, activation checkpointing as
the trainer sets it (ViT blocks, the neck's convolution branches, pixel decoder), frozen base stored
in bf16, float32 compute, batch 1; the frozen text encoder, cached or not, saves nothing) runs under a ``saved_tensors_hooks`` pair that
records every tensor autograd keeps for backward (each storage once, parameters excluded) with
the innermost module running at that moment. Summed by module (the first ``DEPTH`` parts of its
name) this splits the training benchmark's ``activations`` figure into its parts. A checkpointed
region keeps only its inputs (torch's checkpoint saves them before the region runs), so they
count for the module that calls the region; ``(outside any module)`` is the loss and the glue code
between modules. Full run: the full-size model at 504 and 1008 px, each in its own process;
``--quick``: the tiny model, in this process.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Settings, markdown_table, saved_by_module
from benchmarks.measure import measure_module

NAME = "activations"
TITLE = "Where a LoRA training step's activation memory goes (SAM 3, default preset)"
# What the figures depend on (besides the shared timing code): see benchmarks/provenance.py.
SOURCES = ("sam3_lora_kit/lora", "sam3_lora_kit/sam3", "sam3_lora_kit/train", "sam3_lora_kit/data", "sam3_lora_kit/runtime.py",
           "benchmarks/train_step.py", "benchmarks/activations.py")
DEPTH = 3  # module-name parts a part is summed over: backbone.vision_backbone.trunk, transformer.decoder, ...
OUTSIDE = "(outside any module)"
SHOWN_PARTS = 8  # table rows per image size; the rest is summed into one row


def available() -> str | None:
    try:
        import sam3  # noqa: F401
    except ImportError:
        return "sam3 is not installed"
    return None


def part_of(module_name: str) -> str:
    """The part a module's saved tensors count for: its name's first ``DEPTH`` parts."""
    return ".".join(module_name.split(".")[:DEPTH]) if module_name else OUTSIDE


def tally(saved: list[tuple[str, tuple, int]]) -> dict:
    """Per part: bytes, tensor count and the largest tensor's shape (with how many of that shape there are).

    ``saved``: ``(module name, shape, bytes)`` for every storage kept for backward.
    """
    parts: dict[str, dict] = {}
    shapes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for module_name, shape, n_bytes in saved:
        part = parts.setdefault(part_of(module_name), {"bytes": 0, "tensors": 0, "largest_bytes": 0, "largest_shape": None})
        part["bytes"] += n_bytes
        part["tensors"] += 1
        shapes[part_of(module_name)][shape] += 1
        if n_bytes > part["largest_bytes"]:
            part["largest_bytes"], part["largest_shape"] = n_bytes, list(shape)
    for name, part in parts.items():
        part["largest_count"] = shapes[name][tuple(part["largest_shape"])]
    return dict(sorted(parts.items(), key=lambda item: -item[1]["bytes"]))


def worker(spec: dict) -> dict:
    """Build the configuration in ``spec``, run one training forward and record what it saves, by module."""
    import torch

    from benchmarks.train_step import sample_batch
    from sam3_lora_kit.lora import store_frozen_weights
    from sam3_lora_kit.runtime import set_seed
    from sam3_lora_kit.sam3 import DEFAULT_PRESET, apply_lora, build_loss, build_sam3, training_step_loss
    from sam3_lora_kit.train.trainer import set_activation_checkpointing

    torch.set_num_threads(spec["threads"])
    set_seed(0)
    model = build_sam3(spec["size"], device="cpu", image_size=spec["image_size"])
    apply_lora(model, DEFAULT_PRESET, rank=8, alpha=16)
    store_frozen_weights(model, torch.bfloat16)
    set_activation_checkpointing(model, True)  # as in the training benchmark's default rows
    image_size = spec["image_size"] or int(model.image_size)
    batch = sample_batch(1, image_size)
    loss_fn = build_loss("cpu")
    model.train()

    began = time.perf_counter()
    loss, saved = saved_by_module(model, lambda: training_step_loss(model, batch, loss_fn)["core_loss"])
    forward_s = time.perf_counter() - began
    return {"size": spec["size"], "image_size": image_size, "forward_s": forward_s, "loss": float(loss.detach()),
            "saved_bytes": sum(n for _, _, n in saved), "parts": tally(saved)}


def _specs(quick: bool, threads: int) -> list[dict]:
    if quick:
        return [{"size": "tiny", "image_size": None, "threads": threads}]
    return [{"size": "full", "image_size": px, "threads": threads} for px in (504, 1008)]


def run(settings: Settings, log=print) -> dict:
    rows = []
    for spec in _specs(settings.quick, settings.threads):
        log(f"  {spec['size']} model, {spec['image_size'] or 'default'} px")
        if settings.quick:
            rows.append(worker(spec))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            figures = measure_module("benchmarks.activations", ["--worker", json.dumps(spec), "--result", str(result)])
            if figures["returncode"] != 0 or not result.exists():
                rows.append({**spec, "status": "failed", "log_tail": figures["stderr_tail"] or figures["stdout_tail"]})
                continue
            rows.append({**json.loads(result.read_text(encoding="utf-8")), "peak_rss": figures["peak_rss"]})
    return {"parameters": {"preset": "all-attn (default)", "rank": 8, "act_ckpt": "ViT", "frozen_dtype": "bfloat16",
                           "compute_dtype": "float32", "batch_size": 1, "depth": DEPTH}, "rows": rows}


def report(result: dict, out_dir) -> str:
    body = result["result"]
    lines = [f"## {TITLE}", "", " ".join(__doc__.split("\n\n")[1].split()), ""]
    for row in body["rows"]:
        if row.get("status") == "failed":
            lines += [f"**{row['size']} model, {row.get('image_size')} px: failed**", "", "```", row.get("log_tail", ""), "```", ""]
            continue
        total = row["saved_bytes"]
        parts = list(row["parts"].items())
        shown, rest = parts[:SHOWN_PARTS], parts[SHOWN_PARTS:]
        table = [[name, f"{part['bytes'] / 2**20:,.1f}", f"{100 * part['bytes'] / total:.1f}", part["tensors"],
                  f"{tuple(part['largest_shape'])} x {part['largest_count']}"] for name, part in shown]
        if rest:
            table.append([f"{len(rest)} other parts", f"{sum(p['bytes'] for _, p in rest) / 2**20:,.1f}",
                          f"{100 * sum(p['bytes'] for _, p in rest) / total:.1f}", sum(p["tensors"] for _, p in rest), ""])
        lines += [f"### {row['size']} model, {row['image_size']} px: {total / 2**30:.2f} GiB saved for backward "
                  f"(forward {row['forward_s']:.0f} s)", "",
                  markdown_table(["part", "MiB", "%", "tensors", "largest tensor (shape) x how many"], table), ""]
    return "\n".join(lines).rstrip()


def _main() -> int:
    parser = argparse.ArgumentParser(description="one configuration's saved activations by module (internal)")
    parser.add_argument("--worker", required=True)
    parser.add_argument("--result", required=True, type=Path)
    args = parser.parse_args()
    args.result.write_text(json.dumps(worker(json.loads(args.worker))), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
