"""Where ``LoRALinear``'s extra time goes: a per-operator profile against the frozen layer.

For a few SAM 3 shapes at 5184 tokens (a 1008 px image), forward + backward of the frozen
``nn.Linear`` and of ``LoRALinear`` (the fused path these shapes take) run ``steps`` times each
under ``torch.profiler``, and every operator's self CPU time is summed by kind:

- big GEMMs: matrix products with at least half a base product's FLOPs (``x @ W^T``, ``grad_y @ W``);
- rank-sized products: the other matrix products (``grad_y @ B``, ``B @ A`` where the weight
  ``W + s B A`` is rebuilt, forward and backward, and the two reductions over tokens that give
  ``grad_A`` and ``grad_B``; on this path ``x @ A^T`` rides in the forward GEMM's extra columns,
  and a product whose shapes were not recorded counts here too);
- copies and element-wise operators (``copy_``, ``clone``, ``cat``, ``zero_``, ``mul``, ``sum``, ...);
- the rest: the custom autograd function's own Python, views, allocation, autograd bookkeeping.

The kit's extra time over the base, split this way, says what a 1.10x goal is up against. The
profiler adds a cost per operator (more to the kit's dozen small operators than to the base's
two) and counts no time between operators, so profiled totals differ from real ones; each
variant's time without the profiler is measured too (median of paired samples, as in
``lora_layers``), and each round's profiled kit/base ratio is kept, whose spread shows the
profile's own noise. CPU only: on a GPU the operators' self CPU time is launch overhead, not
their run time.
"""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.common import Settings, interleaved_times, markdown_table, summarise
from benchmarks.lora_layers import fwd_bwd_step, randomise_lora

NAME = "lora_profile"
TITLE = "Where LoRALinear's time goes: per-operator profile against the frozen layer"
# What the figures depend on (besides the shared timing code): see benchmarks/provenance.py.
SOURCES = ("sam3_lora_kit/lora", "benchmarks/lora_layers.py", "benchmarks/lora_profile.py")

TOKENS = 72 * 72  # a 1008 px image through a patch-14 ViT
QUICK_TOKENS = 36 * 36
FULL_CASES = [(256, 256, 8), (256, 2048, 4), (1024, 1024, 16), (1024, 3072, 32)]  # (in, out, rank)
QUICK_CASES = [(256, 256, 8)]
FULL_STEPS, QUICK_STEPS = 30, 6  # profiled steps per variant, taken in the turns below
FULL_ROUNDS, QUICK_ROUNDS = 6, 2
MIN_SAMPLE_S = 0.1
TIMING_BUDGET_S = 20.0
CATEGORIES = ("big GEMMs", "rank-sized products", "copies and element-wise", "the rest")
MATMULS = {"aten::mm": (0, 1), "aten::addmm": (1, 2), "aten::addmm_": (1, 2), "aten::bmm": (0, 1),
           "aten::baddbmm": (1, 2), "aten::baddbmm_": (1, 2)}  # operator -> positions of its two factors
ELEMENTWISE = {"aten::copy_", "aten::clone", "aten::cat", "aten::zero_", "aten::fill_", "aten::mul", "aten::mul_",
               "aten::add", "aten::add_", "aten::sum", "aten::div", "aten::div_", "aten::contiguous"}


def available() -> str | None:
    return None


def matmul_flops(name: str, shapes: list[list[int]]) -> int | None:
    """FLOPs of one matrix product from its recorded input shapes (None for other operators or shapes unknown)."""
    positions = MATMULS.get(name)
    if positions is None or len(shapes) <= max(positions):
        return None
    left, right = shapes[positions[0]], shapes[positions[1]]
    if len(left) == 2 and len(right) == 2:  # (M, K) @ (K, N)
        return 2 * left[0] * left[1] * right[1]
    if len(left) == 3 and len(right) == 3:  # (b, M, K) @ (b, K, N)
        return 2 * left[0] * left[1] * left[2] * right[2]
    return None


def category(name: str, shapes: list[list[int]], big_flops: float) -> str:
    """Which of ``CATEGORIES`` an operator counts in; ``big_flops``: half of one base product's FLOPs."""
    flops = matmul_flops(name, shapes)
    if flops is not None:
        return CATEGORIES[0] if flops >= big_flops else CATEGORIES[1]
    if name in MATMULS:
        return CATEGORIES[1]
    return CATEGORIES[2] if name in ELEMENTWISE else CATEGORIES[3]


def profile_rounds(steps_by_name: dict, steps: int, rounds: int,
                   big_flops: float) -> tuple[dict[str, list[dict]], dict[str, list[float]]]:
    """Self CPU time per step of every (operator, input shapes), per variant, largest first; and
    each round's total (ms per step), per variant.

    The variants take turns (``rounds`` rounds of ``steps // rounds`` steps each, the order reversed
    every round), so a drift in the machine's speed reaches all of them alike.
    """
    from torch.profiler import ProfilerActivity, profile

    per_round = max(1, steps // rounds)
    sums: dict[str, dict[tuple, list]] = {name: {} for name in steps_by_name}  # (op, shapes) -> [shapes, us, calls]
    names = list(steps_by_name)
    round_totals: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(per_round):
                    steps_by_name[name]()
            round_micros = 0.0
            for event in prof.key_averages(group_by_input_shape=True):
                shapes = [list(shape) if isinstance(shape, (list, tuple)) else [] for shape in event.input_shapes]
                entry = sums[name].setdefault((event.key, repr(shapes)), [shapes, 0.0, 0])
                entry[1] += event.self_cpu_time_total
                entry[2] += event.count
                round_micros += event.self_cpu_time_total
            round_totals[name].append(round_micros / per_round / 1000)
    total_steps = per_round * rounds
    profiles = {}
    for name, entries in sums.items():
        rows = [{"operator": op, "shapes": shapes, "calls_per_step": calls / total_steps,
                 "self_ms_per_step": micros / total_steps / 1000, "category": category(op, shapes, big_flops)}
                for (op, _), (shapes, micros, calls) in entries.items() if micros > 0]
        profiles[name] = sorted(rows, key=lambda row: -row["self_ms_per_step"])
    return profiles, round_totals


def by_category(rows: list[dict]) -> dict[str, float]:
    """Milliseconds per step in each of ``CATEGORIES``."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for row in rows:
        totals[row["category"]] += row["self_ms_per_step"]
    return totals


def _case(in_features: int, out_features: int, rank: int, tokens: int, settings: Settings, steps: int,
          rounds: int) -> dict:
    from sam3_lora_kit.lora import LoRALinear

    torch.manual_seed(0)
    base = nn.Linear(in_features, out_features).requires_grad_(False)
    kit = LoRALinear(nn.Linear(in_features, out_features), rank, alpha=2.0 * rank)
    with torch.no_grad():
        kit.base_layer.load_state_dict(base.state_dict())
    randomise_lora(kit)
    x = torch.randn(1, tokens, in_features, requires_grad=True)  # (1, N, in)
    grad = torch.randn(1, tokens, out_features)  # (1, N, out)
    steps_by_name = {"base": fwd_bwd_step(base, x, grad), "kit": fwd_bwd_step(kit, x, grad)}
    for step in steps_by_name.values():
        for _ in range(3):  # warm-up: allocator, thread pool, first-call paths
            step()
    big_flops = tokens * in_features * out_features  # half of 2 N in out
    profiles, round_totals = profile_rounds(steps_by_name, steps, rounds, big_flops)
    budget = 0.0 if settings.quick else TIMING_BUDGET_S
    timing = summarise(interleaved_times(steps_by_name, settings, MIN_SAMPLE_S, budget), "base")
    categories = {name: by_category(rows) for name, rows in profiles.items()}
    return {"in": in_features, "out": out_features, "rank": rank, "tokens": tokens, "steps": steps, "rounds": rounds,
            "profiled_ms": {name: sum(totals.values()) for name, totals in categories.items()},
            "categories_ms": categories,
            "extra_ms": {key: categories["kit"][key] - categories["base"][key] for key in CATEGORIES},
            "profiled_rounds_ms": round_totals,
            "operators": profiles,
            "timing": timing}


def run(settings: Settings, log=print) -> dict:
    parameters = {"tokens": QUICK_TOKENS if settings.quick else TOKENS, "dtype": "float32",
                  "steps": QUICK_STEPS if settings.quick else FULL_STEPS,
                  "rounds": QUICK_ROUNDS if settings.quick else FULL_ROUNDS, "categories": list(CATEGORIES)}
    if settings.device.type != "cpu":
        return {"parameters": parameters, "cases": [], "note": "CPU only (self CPU time on a GPU is launch overhead)"}
    cases = []
    for in_features, out_features, rank in QUICK_CASES if settings.quick else FULL_CASES:
        log(f"  profile {in_features}x{out_features} rank {rank}")
        cases.append(_case(in_features, out_features, rank, parameters["tokens"], settings, parameters["steps"],
                           parameters["rounds"]))
    return {"parameters": parameters, "cases": cases}


def _ms_and_share(value: float, reference: float) -> str:
    return f"{value:+.2f} ({100 * value / reference:+.1f} %)"


def report(result: dict, out_dir) -> str:
    body = result["result"]
    parameters = body["parameters"]
    lines = [f"## {TITLE}", "",
             "Forward + backward of the frozen `nn.Linear` and of `LoRALinear` (fused path, rank as given, "
             f"{parameters['tokens']} tokens, float32), {parameters['steps']} steps each under `torch.profiler`, in "
             f"{parameters.get('rounds', 1)} alternating turns; every operator's self CPU time per step, summed by kind. "
             "\"Extra\" is the kit's time in that kind less the base's, in ms per step and as a share of the base's "
             "profiled step. Big GEMMs: matrix products with at least half a base product's FLOPs (the kit's carry "
             "its extra rank columns: `x A^T` forward, `grad_y B` backward where the backward stacks it, see `_stacked_backward`); rank-sized products: "
             "the other matrix products (`grad_y B`, `B A` where the weight is rebuilt, the two reductions over "
             "tokens that give `grad_A` and `grad_B`); the rest: the custom autograd function's Python, views, "
             "allocation and autograd bookkeeping. The profiler adds a cost per operator (more to the kit's dozen "
             "small operators than to the base's two) and counts no time between operators, so the profiled "
             "ratio (with its spread over the turns, the profile's own noise) differs from the ratio without the "
             "profiler, measured in paired samples in the last columns.", ""]
    if not body["cases"]:
        return "\n".join(lines + [body.get("note", "no cases")])
    rows = []
    for case in body["cases"]:
        base_ms = case["profiled_ms"]["base"]
        timing = case["timing"]
        turns = [kit / base for base, kit in zip(case["profiled_rounds_ms"]["base"], case["profiled_rounds_ms"]["kit"])]
        rows.append([f"{case['in']}x{case['out']}", str(case["rank"]), f"{base_ms:.2f}", f"{case['profiled_ms']['kit']:.2f}",
                     f"{case['profiled_ms']['kit'] / base_ms:.3f} ({min(turns):.2f}-{max(turns):.2f})",
                     *(_ms_and_share(case["extra_ms"][key], base_ms) for key in CATEGORIES),
                     f"{timing['median_s']['base'] * 1000:.2f}", f"{timing['median_s']['kit'] * 1000:.2f}",
                     f"{timing['ratio']['kit']:.3f}", str(len(timing["times_s"]["base"]))])
    lines.append(markdown_table(["in x out", "rank", "profiled base ms", "profiled kit ms", "profiled kit/base (turns)",
                                 *(f"extra: {key}" for key in CATEGORIES),
                                 "base ms, no profiler", "kit ms, no profiler", "kit/base, no profiler", "pairs"], rows))
    lines += ["", "The kit's largest operators (self CPU time per step):", ""]
    op_rows = []
    for case in body["cases"]:
        for row in case["operators"]["kit"][:6]:
            op_rows.append([f"{case['in']}x{case['out']} r{case['rank']}", f"`{row['operator']}`",
                            " ".join("x".join(map(str, shape)) for shape in row["shapes"] if shape) or "-",
                            f"{row['calls_per_step']:g}", f"{row['self_ms_per_step']:.2f}", row["category"]])
    lines.append(markdown_table(["case", "operator", "input shapes", "calls/step", "ms/step", "kind"], op_rows))
    return "\n".join(lines)

