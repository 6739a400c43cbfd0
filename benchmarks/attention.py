"""Attention with dropout on a CPU: PyTorch's ``scaled_dot_product_attention`` against the kit's blockwise path.

SAM 3 trains with attention dropout 0.1; PyTorch's fused CPU kernel refuses dropout, so its CPU
path materialises ``(N, H, L, S)`` scores. Each variant runs in its own process (forward +
backward of one attention, float32, ``dropout_p=0.1``), so its peak RSS (``VmHWM``) is its own;
the figure reported is that peak less the RSS once the inputs exist. Shapes: SAM 3's fusion
encoder self-attention (``N`` = 3 prompts, 8 heads, head size 32) at 504 and 1008 px; ``--quick``
runs one small shape.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Settings, markdown_table
from benchmarks.measure import measure_module, vm_bytes

NAME = "attention"
TITLE = "Attention with dropout on a CPU: PyTorch's path against the kit's blockwise path"
# What the figures depend on (besides the shared timing code): see benchmarks/provenance.py.
SOURCES = ("sam3_lora_kit/lora/attention.py", "benchmarks/attention.py")
VARIANTS = ("pytorch", "blockwise")
DROPOUT = 0.1


def available() -> str | None:
    return None


def _shapes(quick: bool) -> list[dict]:
    if quick:
        return [{"label": "encoder, 224 px (16 x 16 tokens)", "batch": 3, "heads": 8, "tokens": 256, "head_dim": 32}]
    return [{"label": f"encoder, {px} px ({px // 14} x {px // 14} tokens)", "batch": 3, "heads": 8,
             "tokens": (px // 14) ** 2, "head_dim": 32} for px in (504, 1008)]


def worker(variant: str, shape: dict, repeats: int, threads: int) -> dict:
    """Time ``repeats`` forward + backward passes (after one warm-up); RSS before and peak."""
    import torch
    import torch.nn.functional as F

    from sam3_lora_kit.lora.attention import blockwise_attention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dims = (shape["batch"], shape["heads"], shape["tokens"], shape["head_dim"])
    q, k, v = (torch.randn(dims, requires_grad=True) for _ in range(3))  # (N, H, L, D)
    rss_inputs = vm_bytes("self", "VmRSS")

    def step() -> float:
        began = time.perf_counter()
        if variant == "pytorch":
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=DROPOUT)
        else:
            out = blockwise_attention(q, k, v, None, DROPOUT)
        out.sum().backward()
        return time.perf_counter() - began

    step()
    times = [step() for _ in range(repeats)]
    return {"rss_inputs": rss_inputs, "times_s": times, "s_median": statistics.median(times)}


def run(settings: Settings, log=print) -> dict:
    repeats = 1 if settings.quick else settings.repeats
    rows = []
    for shape in _shapes(settings.quick):
        entry = {**shape}
        for variant in VARIANTS:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out.json"
                figures = measure_module("benchmarks.attention", ["--worker", variant, json.dumps(shape), str(repeats),
                                                                  str(settings.threads), str(out)])
                if figures["returncode"] != 0 or not out.exists():
                    entry[variant] = {"status": f"failed (exit {figures['returncode']})", "log_tail": figures["stderr_tail"]}
                    continue
                inner = json.loads(out.read_text(encoding="utf-8"))
            entry[variant] = {"status": "ok", **inner, "peak_rss": figures["peak_rss"],
                              "extra_bytes": figures["peak_rss"] - inner["rss_inputs"]}
            log(f"  {shape['label']} {variant}: {entry[variant]['s_median']:.2f} s, "
                f"peak over inputs {entry[variant]['extra_bytes'] / 2**30:.2f} GiB")
        if all(entry.get(v, {}).get("status") == "ok" for v in VARIANTS):
            entry["time_ratio"] = entry["blockwise"]["s_median"] / entry["pytorch"]["s_median"]
            entry["memory_ratio"] = entry["blockwise"]["extra_bytes"] / entry["pytorch"]["extra_bytes"]
        rows.append(entry)
    return {"parameters": {"dropout_p": DROPOUT, "dtype": "float32", "repeats": repeats,
                           "order": "one process per variant, PyTorch's first"}, "rows": rows}


def report(result: dict, out_dir) -> str:
    body = result["result"]
    table = []
    for row in body["rows"]:
        scores = 4 * row["batch"] * row["heads"] * row["tokens"] ** 2
        cells = [row["label"], f"({row['batch']}, {row['heads']}, {row['tokens']}, {row['head_dim']})", f"{scores / 2**30:.2f}"]
        for variant in VARIANTS:
            figures = row.get(variant, {})
            ok = figures.get("status") == "ok"
            cells += [f"{figures['s_median']:.2f}" if ok else figures.get("status", "n/a"),
                      f"{figures['extra_bytes'] / 2**30:.2f}" if ok else "n/a"]
        cells += [f"{row['time_ratio']:.2f}" if "time_ratio" in row else "n/a",
                  f"{row['memory_ratio']:.3f}" if "memory_ratio" in row else "n/a"]
        table.append(cells)
    return "\n".join([
        f"## {TITLE}", "",
        " ".join(__doc__.split("\n\n")[1].split()), "",
        markdown_table(["attention", "q, k, v (N, H, L, D)", "one score matrix GiB", "PyTorch s", "PyTorch peak GiB",
                        "blockwise s", "blockwise peak GiB", "blockwise / PyTorch time", "blockwise / PyTorch memory"], table),
    ])


def _main() -> int:
    parser = argparse.ArgumentParser(description="one attention variant (internal; run by python -m benchmarks)")
    parser.add_argument("--worker", nargs=5, metavar=("VARIANT", "SHAPE_JSON", "REPEATS", "THREADS", "OUT"), required=True)
    variant, shape, repeats, threads, out = parser.parse_args().worker
    figures = worker(variant, json.loads(shape), int(repeats), int(threads))
    Path(out).write_text(json.dumps(figures), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
