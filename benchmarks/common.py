"""Shared measurement helpers: machine facts, interleaved timing, medians, saved-tensor bytes."""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping

import torch
from torch import nn


@dataclasses.dataclass
class Settings:
    """What every benchmark is told about the run."""

    quick: bool  # the small grid that CI runs
    device: torch.device  # where the benchmark runs
    threads: int  # torch.set_num_threads for CPU runs
    repeats: int  # timed repetitions per variant after warm-up
    warmup: int  # untimed runs per variant first


def machine_info(device: torch.device, threads: int) -> dict:
    """Machine, load and library versions recorded in every result file."""
    import importlib.metadata as metadata

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {},
    }
    for package in ("torch", "peft", "sam3", "supervision", "numpy", "sam3-lora-kit"):
        try:
            info["versions"][package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info["versions"][package] = None
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call: CUDA events after a synchronise on GPU, ``perf_counter`` on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def interleaved_times(
    variants: Mapping[str, Callable[[], object]],
    settings: Settings,
    min_sample_s: float = 0.0,
    budget_s: float = 0.0,
    max_repeats: int = 41,
) -> dict[str, list[float]]:
    """Seconds per call of every variant, interleaved (ABC, BCA, CAB, ...), ``settings.repeats`` samples each or more.

    Contention from other processes then hits all variants alike; each variant first runs
    ``settings.warmup`` times untimed. With ``min_sample_s`` > 0, each timed sample loops the
    call enough times that every sample lasts at least ``min_sample_s`` (the same count for
    every variant, so paired samples stay comparable), and reports the time per call:
    short calls then average over many runs instead of one. With ``budget_s`` > 0, cheap
    cases take more rounds, as many as fit in ``budget_s`` of timed samples (see
    ``repeats_for_budget``): a median of paired ratios only narrows with more pairs.
    """
    names = list(variants)
    for _ in range(settings.warmup):
        for name in names:
            variants[name]()
    single = {name: time_once(fn, settings.device) for name, fn in variants.items()}  # seconds, one call each
    calls = calls_for_sample(min(single.values()), min_sample_s)
    repeats = repeats_for_budget(calls * sum(single.values()), budget_s, settings.repeats, max_repeats)
    synchronize(settings.device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(_looped(variants[name], calls), settings.device) / calls)
    return times


def calls_for_sample(fastest_s: float, min_sample_s: float) -> int:
    """Calls per timed sample so that the fastest variant's sample lasts ``min_sample_s`` (1 if 0)."""
    if min_sample_s <= 0:
        return 1
    return max(1, math.ceil(min_sample_s / max(fastest_s, 1e-9)))


def repeats_for_budget(round_s: float, budget_s: float, minimum: int, maximum: int) -> int:
    """Rounds that fit in ``budget_s`` when one round (every variant's sample) takes ``round_s``.

    Never fewer than ``minimum`` (the requested repeats) nor more than ``maximum`` (unless
    ``minimum`` is larger); ``budget_s`` <= 0 gives ``minimum``.
    """
    if budget_s <= 0 or round_s <= 0:
        return minimum
    return max(minimum, min(maximum, int(budget_s // round_s)))


def _looped(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(calls):
            fn()

    return run


def summarise(times: Mapping[str, list[float]], reference: str) -> dict:
    """Medians per variant, and each variant's ratio to ``reference``.

    ``ratio`` is the median over repeats of the paired ratio (variant and reference timed in
    the same round), which cancels slow drifts in machine load; ``ratio_of_medians`` is given too.
    """
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratios, ratio_of_medians = {}, {}
    for name, values in times.items():
        paired = [value / ref for value, ref in zip(values, times[reference])]
        ratios[name] = statistics.median(paired)
        ratio_of_medians[name] = medians[name] / medians[reference]
    return {"median_s": medians, "ratio": ratios, "ratio_of_medians": ratio_of_medians, "times_s": dict(times)}


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], module: nn.Module) -> int:
    """Bytes autograd keeps for backward during ``fn()``, excluding ``module``'s parameters.

    Counts each storage once. On CPU this is the activation memory a layer adds to training,
    measured exactly; CUDA runs report ``max_memory_allocated`` as well.
    """
    out, saved = saved_by_module(module, fn)
    del out
    return sum(n_bytes for _, _, n_bytes in saved)


def saved_by_module(model, forward: Callable[[], Any]) -> tuple[Any, list[tuple[str, tuple, int]]]:
    """Run ``forward()`` and return its result with ``(module name, shape, bytes)`` for every storage autograd saved.

    Each storage counts once, for the innermost module of ``model`` running when it was first
    saved (``""`` outside every module); ``model``'s parameters are left out.
    """
    names = {module: name for name, module in model.named_modules()}
    running = [""]  # the module stack; "" = outside every module

    def enter(module, args) -> None:
        running.append(names[module])

    def leave(module, args, output) -> None:  # returns None: a hook's return value would replace the output
        running.pop()

    parameter_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[str, tuple, int]] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if pointer not in parameter_ptrs and pointer not in seen:
            seen[pointer] = (running[-1], tuple(tensor.shape), storage.nbytes())
        return tensor

    handles = []
    try:
        for module in model.modules():
            handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            result = forward()
    finally:
        for handle in handles:
            handle.remove()
    return result, list(seen.values())


def peak_cuda_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before (None on CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f}"


def fmt_mib(n_bytes: float | None) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / 2**20:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
