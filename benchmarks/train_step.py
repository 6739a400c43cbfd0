"""One training step of SAM 3, LoRA against full fine-tuning: seconds per step, peak memory, trainable parameters.

Every configuration (model size, LoRA preset or ``full``, ViT activation checkpointing on or
off) runs in its own process (``python -m benchmarks.train_step --worker JSON``), so its peak
RSS is that process's alone: the parent reads it from ``os.wait4``'s resource usage, which also
survives a child that the kernel killed. A sampler thread in the parent watches the child and
the machine: when the machine's available memory falls under ``GUARD_BYTES`` it stops the
child and records the configuration as out of memory rather than letting the kernel's OOM
killer pick another process (children also raise their own ``oom_score_adj``).

- ``--quick``: the tiny model on the CPU, LoRA (default preset) against full fine-tuning.
- full run: the same, plus the full-size model (randomly initialised, official architecture)
  at 504 px fp32 on the CPU (1008 px bf16 on CUDA, timed with CUDA events, peak by
  ``torch.cuda.max_memory_allocated``), each LoRA preset with and without ViT activation
  checkpointing, against full fine-tuning measured the same way, one at a time, within a
  time budget (the default preset and full fine-tuning first); on the CPU, last, the default
  preset at 1008 px with checkpointing and its frozen base in bf16 (the goal's configuration,
  measured by whole-process RSS with fp32 compute) twice: with glibc's default allocator
  settings, and with ``MALLOC_MMAP_THRESHOLD_=131072`` (``MALLOC_MMAP_THRESHOLD`` below), which
  makes glibc return freed tensor memory to the system instead of keeping it in its heap; then
  full fine-tuning at 1008 px with checkpointing and that setting, where the machine has the memory.
  LoRA runs set up the model as ``sam3-lora train`` does: the frozen text encoder's features for
  the category names computed once and the encoder freed (``text_cache``); one 504 px run keeps
  the encoder and runs it at every step, to show what that saves.

A memory model (weights + gradients + AdamW state + activations, from parameter counts and
the bytes autograd saves) is computed for each configuration and set beside what was measured.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import Settings, markdown_table
from benchmarks.measure import vm_bytes

NAME = "train_step"
TITLE = "Training step: LoRA against full fine-tuning (SAM 3)"
# What the figures depend on (besides the shared timing code): see benchmarks/provenance.py.
SOURCES = ("sam3_lora_kit/lora", "sam3_lora_kit/sam3", "sam3_lora_kit/train", "sam3_lora_kit/data", "sam3_lora_kit/runtime.py",
           "benchmarks/train_step.py")

GIB = 2**30
GUARD_BYTES = int(1.0 * GIB)  # stop a child when the machine has less than this available
FULL_CPU_IMAGE_SIZE = 504  # 36 x 36 tokens: fits a 24 GB CPU machine
FULL_CUDA_IMAGE_SIZE = 1008  # the official input size
CPU_1008_TIMEOUT_S = 3600  # the default preset at 1008 px on the CPU: one step takes tens of minutes
BUDGET_S = 90 * 60  # full-size configurations stop being started after this long (a whole CPU run: about 55 minutes)
MALLOC_MMAP_THRESHOLD = 131072  # bytes: glibc serves larger blocks by mmap and unmaps them when freed
GOALS = {"lora_peak_gb_1008_cuda": 8.0, "lora_peak_gb_1008_cpu": 8.0, "full_over_lora_memory": 3.0}


def available() -> str | None:
    try:
        import psutil  # noqa: F401
        import sam3  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed"
    return None


# ----------------------------------------------------------------------------------- worker side
def proc_status_bytes(pid: int | str = "self", field: str = "VmHWM") -> int:
    """``VmHWM`` (peak resident set) or ``VmRSS`` of a process, in bytes; ``ru_maxrss`` for this
    process where ``/proc`` is unreadable.

    ``VmHWM`` covers only the program the process runs now, unlike ``ru_maxrss``, which Linux
    carries over from before ``exec`` (a child forked from a 1 GB parent starts at 1 GB).
    """
    value = vm_bytes(pid, field)
    if value == 0 and pid == "self":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return value


def _rss_bytes() -> int:
    """Peak RSS of this process so far (since the last ``_reset_peak_rss``)."""
    return proc_status_bytes("self", "VmHWM")


def _reset_peak_rss() -> bool:
    """Set this process's ``VmHWM`` back to its current RSS (Linux ``clear_refs``), so the next
    reading is the peak of what runs in between; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


PHASES = ("build", "forward", "backward", "optimizer")  # where a CPU run's peak RSS can be


def _saved_bytes_hook():
    """A ``saved_tensors_hooks`` pair counting each saved storage once (parameters excluded later)."""
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    return seen, pack


def sample_batch(batch_size: int, image_size: int):
    """The first ``batch_size`` training images of the bundled sample (converted to COCO), as a SAM 3 batch."""
    from sam3_lora_kit.data import CocoSegmentationDataset, convert_roboflow, sample_data_dir
    from sam3_lora_kit.sam3 import BatchBuilder

    with tempfile.TemporaryDirectory() as tmp:  # the sample export, converted to clean COCO
        convert_roboflow(sample_data_dir() / "coco-segmentation", Path(tmp) / "coco")
        dataset = CocoSegmentationDataset(Path(tmp) / "coco", "train")
        samples = [dataset[i] for i in range(batch_size)]
    return BatchBuilder(list(dataset.category_names), image_size, seed=0)(samples)


def worker(spec: dict) -> dict:
    """Build the model, set up the configuration in ``spec`` and time training steps; returns figures."""
    import torch

    from sam3_lora_kit.runtime import autocast_context, set_seed
    from sam3_lora_kit.sam3 import apply_lora, build_loss, build_sam3, training_step_loss

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else None
    set_seed(0)
    out: dict = {"rss_after_import": proc_status_bytes("self", "VmRSS")}
    began = time.perf_counter()
    model = build_sam3(spec["size"], device=device, image_size=spec["image_size"])
    out["build_s"] = time.perf_counter() - began
    out["rss_after_build"] = proc_status_bytes("self", "VmRSS")
    out["param_bytes_at_build"] = sum(p.numel() * p.element_size() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    if spec["preset"] == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    else:
        apply_lora(model, spec["preset"], rank=spec["rank"], alpha=spec["alpha"])
        total = sum(p.numel() for p in model.parameters())  # with the LoRA factors
        if spec.get("frozen_dtype", "float32") != "float32":
            from sam3_lora_kit.lora import store_frozen_weights

            out["frozen_storage"] = store_frozen_weights(model, getattr(torch, spec["frozen_dtype"])).summary()
    from sam3_lora_kit.train.trainer import set_activation_checkpointing  # imported after rss_after_import, as before

    # as `sam3-lora train` sets it: the ViT blocks, the neck's branches, and the pixel decoder nested inside
    # the segmentation head, which sam3 checkpoints as a whole in training regardless (as the fusion encoder and decoder)
    set_activation_checkpointing(model, spec["act_ckpt"])
    image_size = spec["image_size"] or int(model.image_size)
    out["image_size"] = image_size
    batch = sample_batch(spec["batch_size"], image_size)
    if spec.get("text_cache", True):  # as `sam3-lora train` does: a frozen text encoder's features once, the encoder freed
        from sam3_lora_kit.sam3.text_cache import cache_text_features

        taken_out = cache_text_features(model, batch.find_text_batch, device, dtype)
        out["text_cache"] = taken_out is not None
        del taken_out
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    out.update(params_total=total, params_trainable=trainable, percent_trainable=100.0 * trainable / total,
               param_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
               trainable_bytes=sum(p.numel() * p.element_size() for p in params))

    if cuda:
        from sam3.model.utils.misc import copy_data_to_device

        batch = copy_data_to_device(batch, device)
    loss_fn = build_loss(device)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    model.train()

    # Peak RSS phase by phase (CPU): building the model, and the forward, backward and optimizer
    # step of every step (each phase's peak the largest over the steps).
    phase_peaks = {"build": _rss_bytes()}
    track_phases = not cuda and _reset_peak_rss()

    def end_phase(phase: str) -> None:
        if track_phases:
            phase_peaks[phase] = max(phase_peaks.get(phase, 0), _rss_bytes())
            _reset_peak_rss()

    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, pack = _saved_bytes_hook()
    vit = next(m for m in model.modules() if type(m).__name__ == "ViT")
    shapes: list[tuple] = []

    def step(count: bool = False) -> float:
        """One optimizer step; ``count``: tally what autograd saves in the forward (activation bytes
        with this configuration's checkpointing; each storage once, parameters excluded)."""
        optimizer.zero_grad(set_to_none=True)
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor) if count else contextlib.nullcontext()
        handle = vit.blocks[0].register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
        with hooks, autocast_context(device, dtype):
            loss = training_step_loss(model, batch, loss_fn)["core_loss"]
        handle.remove()
        if count:
            out["saved_forward_bytes"] = sum(n for ptr, n in seen.items() if ptr not in param_ptrs)
            out["rss_after_forward"] = proc_status_bytes("self", "VmRSS")
        end_phase("forward")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        end_phase("backward")
        optimizer.step()
        end_phase("optimizer")
        return float(loss.detach())

    times, losses = [], []
    for index in range(spec["warmup"] + spec["steps"]):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            losses.append(step(count=index == 0))
            end.record()
            torch.cuda.synchronize(device)
            seconds = start.elapsed_time(end) / 1000.0
        else:
            start_s = time.perf_counter()
            losses.append(step(count=index == 0))
            seconds = time.perf_counter() - start_s
        if index >= spec["warmup"]:
            times.append(seconds)
        out["rss_after_step_%d" % (index + 1)] = proc_status_bytes("self", "VmRSS")
    out.update(times_s=times, losses=losses, s_per_step=statistics.median(times))
    if cuda:
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)  # the last step's
    if track_phases:
        out["peak_rss_phases"] = phase_peaks
    out["peak_rss_self"] = max(_rss_bytes(), *phase_peaks.values())
    # One ViT block alone at the tokens it saw: the bytes it saves for backward (the model's unit).
    seen.clear()
    x = torch.randn(shapes[0], device=device, requires_grad=True)  # (B, H/14, W/14, C): block 0's input
    from sam3_lora_kit.lora import saving_stored_weights

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast_context(device, dtype), \
            saving_stored_weights(vit.blocks[0]):  # as training_step_loss saves them
        y = vit.blocks[0](x)
    out["vit_blocks"] = len(vit.blocks)
    out["vit_block_saved_bytes"] = sum(n for ptr, n in seen.items() if ptr not in param_ptrs)
    out["vit_block_input_bytes"] = x.numel() * (2 if cuda else 4)
    out["vit_global_blocks"] = [i for i, b in enumerate(vit.blocks) if getattr(b, "window_size", 0) == 0]
    out["vit_trainable"] = any(p.requires_grad for p in vit.parameters())
    del x, y
    return out


# ----------------------------------------------------------------------------------- parent side
def _raise_oom_score() -> None:
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as handle:
            handle.write("1000")  # if the kernel must kill, it kills the benchmark first
    except OSError:
        pass


def _frozen(spec: dict) -> str:
    """How the configuration stores the frozen base weights: "fp32" or "bf16"."""
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[spec.get("frozen_dtype", "float32")]


def _text_encoder(row: dict) -> str:
    """The text encoder in a run: "cached" (the category names' features computed once and the encoder
    freed, as `sam3-lora train` does), "per step" (frozen, run at every step: runs from before the
    cache, or with it off) or "trains" (full fine-tuning)."""
    if row["config"]["preset"] == "full":
        return "trains"
    if "text_cache" not in row and row.get("status", "").startswith("not run"):  # never started: what it was set up for
        return "cached" if row["config"].get("text_cache", True) else "per step"
    return "cached" if row.get("text_cache") else "per step"


def run_config(spec: dict, timeout_s: float, log=print) -> dict:
    """Run one configuration in a child process; returns its figures plus ``status`` and ``peak_rss``."""
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "worker.log"
        command = [sys.executable, "-m", "benchmarks.train_step", "--worker", json.dumps(spec), "--result", str(result_path)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        if spec.get("malloc_mmap_threshold"):
            env["MALLOC_MMAP_THRESHOLD_"] = str(spec["malloc_mmap_threshold"])
        began = time.perf_counter()
        with open(log_path, "wb") as log_file:
            child = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], stdout=log_file,
                                     stderr=subprocess.STDOUT, env=env, preexec_fn=_raise_oom_score)
        state = {"sampled_peak": 0, "hwm": 0, "min_available": None, "stopped": None, "done": False}

        def sample() -> None:
            try:
                proc = psutil.Process(child.pid)
            except psutil.Error:
                return
            while not state["done"]:
                try:
                    state["sampled_peak"] = max(state["sampled_peak"], proc.memory_info().rss)
                except psutil.Error:
                    return
                state["hwm"] = max(state["hwm"], proc_status_bytes(child.pid, "VmHWM"))
                available = psutil.virtual_memory().available
                state["min_available"] = available if state["min_available"] is None else min(state["min_available"], available)
                if available < GUARD_BYTES and not state["stopped"]:
                    state["stopped"] = f"stopped by the benchmark: machine had {available / GIB:.2f} GiB available"
                    child.kill()
                if time.perf_counter() - began > timeout_s and not state["stopped"]:
                    state["stopped"] = f"stopped by the benchmark: over {timeout_s:.0f} s"
                    child.kill()
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        state["done"] = True
        child.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
        # peak_rss: the child's own VmHWM (reported by it, or the last sampled while it ran);
        # ru_maxrss_wait4 also counts the parent's image copied by fork, so it is only an upper bound.
        figures: dict = {"wall_s": time.perf_counter() - began, "peak_rss": state["hwm"],
                         "ru_maxrss_wait4": usage.ru_maxrss * 1024, "peak_rss_sampled": state["sampled_peak"], "min_available": state["min_available"],
                         "returncode": child.returncode}
        if result_path.exists():
            figures.update(json.loads(result_path.read_text(encoding="utf-8")))
            figures["peak_rss"] = max(figures["peak_rss"], figures["peak_rss_self"])
            figures["status"] = "ok"
        elif state["stopped"]:
            figures["status"] = "oom: " + state["stopped"] if "available" in state["stopped"] else state["stopped"]
        elif child.returncode in (-9, 137):
            figures["status"] = "oom: killed by SIGKILL (the kernel's OOM killer)"
        else:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-1500:]
            figures["status"] = f"failed (exit {child.returncode})"
            figures["log_tail"] = tail
    cuda_peak = f"CUDA peak {figures['cuda_peak_bytes'] / GIB:.2f} GiB  " if "cuda_peak_bytes" in figures else ""
    log(f"  {spec['size']:<4} {spec['preset']:<13} act_ckpt={str(spec['act_ckpt']):<5} frozen={_frozen(spec)} malloc={_malloc(spec)} {figures['status']:<4} "
        f"peak RSS {figures['peak_rss'] / GIB:.2f} GiB  {cuda_peak}step {figures.get('s_per_step', float('nan')):.2f} s  "
        f"(wall {figures['wall_s']:.0f} s)")
    if "log_tail" in figures:
        log(figures["log_tail"])
    return {"config": spec, **figures}


def memory_model(row: dict) -> dict | None:
    """Predicted peak (bytes) from parameter counts and saved-activation bytes, beside the measured one.

    weights = all parameters x their bytes (frozen ones stored in bf16: 2 B); gradients = trainable x 4 B; AdamW = 2 x trainable x 4 B;
    activations = ViT blocks x (block saved bytes, or block input bytes when checkpointed, plus
    one block recomputed; nothing when no ViT parameter trains) + what the rest of the model saves (forward total minus the ViT part).
    Steady state (after a first step): weights + AdamW + max(activations, gradients), since
    activations are freed while gradients fill. A first step alone: weights + max(activations,
    gradients + AdamW). Plus the process's runtime (RSS after the build less the weights; none on
    CUDA, where the measured peak is ``max_memory_allocated``: tensors only). The measured side is
    the training steps' peak RSS where the run recorded its phases (the build's own peak, the
    whole model in float32 before frozen weights are stored in bf16, is no term of the model), else
    the whole process's.
    """
    if row.get("status") != "ok":
        return None
    weights = row["param_bytes"]
    grads = row["trainable_bytes"]
    adamw = 2 * row["trainable_bytes"]
    blocks = row["vit_blocks"]
    # A ViT with nothing to train (detector-attn) is outside the backward pass: it saves nothing.
    if not row.get("vit_trainable", row["config"].get("preset") != "detector-attn"):
        vit_saved = vit_peak = 0
    elif row["config"]["act_ckpt"]:
        vit_saved = blocks * row["vit_block_input_bytes"]
        vit_peak = vit_saved + row["vit_block_saved_bytes"]
    else:
        vit_saved = vit_peak = blocks * row["vit_block_saved_bytes"]
    rest = max(row["saved_forward_bytes"] - vit_saved, 0)
    activations = vit_peak + rest
    phases = row.get("peak_rss_phases") or {}
    training = {phase: phases[phase] for phase in PHASES[1:] if phase in phases}
    build_peak, peak_phase = phases.get("build"), None
    if "cuda_peak_bytes" in row:  # tensors only: no runtime term
        runtime, measured = 0, row["cuda_peak_bytes"]
    else:
        runtime = max(row["rss_after_build"] - row.get("param_bytes_at_build", weights), row["rss_after_import"])  # libraries, tokenizer, allocator
        measured = row["peak_rss"]
        if training:  # the model predicts training: compare it with the training phases' peak, not the build's
            peak_phase = max(training, key=training.get)
            measured = training[peak_phase]
    if row["config"]["warmup"] + row["config"]["steps"] > 1:
        predicted = runtime + weights + adamw + max(activations, grads)
    else:
        predicted = runtime + weights + max(activations, grads + adamw)
    return {"runtime": runtime, "weights": weights, "gradients": grads, "adamw": adamw,
            "activations_per_vit_block": row["vit_block_saved_bytes"], "activations_vit": vit_peak,
            "activations_rest": rest, "activations": activations, "predicted_peak": predicted,
            "measured_peak": measured, "measured_over_predicted": measured / predicted,
            "peak_phase": peak_phase, "build_peak": build_peak}


def _configs(settings: Settings) -> list[dict]:
    from sam3_lora_kit.sam3 import DEFAULT_PRESET, LORA_PRESETS

    cuda = settings.device.type == "cuda"
    base = {"rank": 8, "alpha": 16.0, "batch_size": 1, "threads": settings.threads, "device": str(settings.device)}
    tiny_steps = {"warmup": 0, "steps": 1} if settings.quick else {"warmup": 1, "steps": settings.repeats}
    tiny = [{**base, **tiny_steps, "size": "tiny", "image_size": None, "preset": preset, "act_ckpt": False}
            for preset in (DEFAULT_PRESET, "full")]
    if settings.quick:
        return tiny
    image_size = FULL_CUDA_IMAGE_SIZE if cuda else FULL_CPU_IMAGE_SIZE
    steps = {"warmup": 1, "steps": 3} if cuda else {"warmup": 0, "steps": 1}  # one CPU step takes minutes
    # (preset, ViT activation checkpointing, storage of the frozen base weights)
    order = [(DEFAULT_PRESET, False, "float32"), (DEFAULT_PRESET, True, "float32"), ("full", False, "float32"),
             ("full", True, "float32"), (DEFAULT_PRESET, True, "bfloat16"), (DEFAULT_PRESET, False, "bfloat16")]
    order += [(preset, ckpt, "float32") for ckpt in (False, True) for preset in LORA_PRESETS if preset != DEFAULT_PRESET]
    full = [{**base, **steps, "size": "full", "image_size": image_size, "preset": preset, "act_ckpt": ckpt,
             "frozen_dtype": frozen} for preset, ckpt, frozen in order]
    # the default configuration with its frozen text encoder run at every step instead of cached: what the cache saves
    full.append({**base, **steps, "size": "full", "image_size": image_size, "preset": DEFAULT_PRESET, "act_ckpt": True,
                 "frozen_dtype": "bfloat16", "text_cache": False})
    if cuda:  # the trainer's defaults (batch 2, `auto` checkpointing and bf16 storage), against full fine-tuning at batch 2
        full[6:6] = [{**base, **steps, "size": "full", "image_size": image_size, "preset": preset, "act_ckpt": True,
                      "frozen_dtype": frozen, "batch_size": 2}
                     for preset, frozen in ((DEFAULT_PRESET, "bfloat16"), ("full", "float32"))]
    if not cuda:  # the goal's configuration at the official size, by RSS, and full fine-tuning if it fits
        full += [{**base, **steps, "size": "full", "image_size": FULL_CUDA_IMAGE_SIZE, "preset": preset,
                  "act_ckpt": True, "frozen_dtype": frozen, "malloc_mmap_threshold": threshold}
                 for preset, frozen, threshold in ((DEFAULT_PRESET, "bfloat16", None), (DEFAULT_PRESET, "bfloat16", MALLOC_MMAP_THRESHOLD),
                                                   ("full", "float32", MALLOC_MMAP_THRESHOLD))]
    return tiny + full


def _estimate_need(spec: dict, lora_peak: float | None) -> float:
    """Bytes a full-size configuration is expected to need (to wait for free memory before starting it)."""
    if spec["preset"] == "full":
        return 18 * GIB
    return lora_peak or 9 * GIB


def _wait_for_memory(need: float, log, wait_s: float = 120.0) -> tuple[bool, float]:
    import psutil

    deadline = time.perf_counter() + wait_s
    while True:
        available = psutil.virtual_memory().available
        if available >= need + GUARD_BYTES or time.perf_counter() > deadline:
            return available >= need + GUARD_BYTES, available
        log(f"  waiting for memory: {available / GIB:.1f} GiB available, {need / GIB:.1f} GiB wanted")
        time.sleep(10)


def run(settings: Settings, log=print, budget_s: float | None = None) -> dict:
    """Every configuration of ``_configs`` in turn; full-size ones stop being started after
    ``budget_s`` (default ``BUDGET_S``, or ``$BENCH_FULL_BUDGET_MIN`` minutes when set)."""
    import psutil

    if budget_s is None:
        budget_s = float(os.environ.get("BENCH_FULL_BUDGET_MIN", BUDGET_S / 60)) * 60
    began = time.perf_counter()
    rows = []
    for spec in _configs(settings):
        if spec["size"] == "full":
            if time.perf_counter() - began > budget_s:
                rows.append({"config": spec, "status": f"not run: over the {budget_s / 60:.0f}-minute budget"})
                continue
            lora_peaks = [r["peak_rss"] for r in rows if r["config"]["size"] == "full" and r.get("status") == "ok"
                          and r["config"]["preset"] != "full"]
            need = _estimate_need(spec, max(lora_peaks) if lora_peaks else None)
            ok, available = _wait_for_memory(need, log)
            if not ok:
                rows.append({"config": spec, "status": f"not run: {available / GIB:.1f} GiB available, about "
                             f"{need / GIB:.0f} GiB needed", "available_at_start": available})
                continue
        timeout_s = 600 if spec["size"] == "tiny" else CPU_1008_TIMEOUT_S if _is_cpu_1008(spec) else 1800
        row = run_config(spec, timeout_s=timeout_s, log=log)
        row["available_at_start"] = psutil.virtual_memory().available
        row["load_average_at_start"] = list(os.getloadavg())
        row["memory_model"] = memory_model(row)
        rows.append(row)
    return {"parameters": {"rank": 8, "alpha": 16.0, "batch_size": 1, "optimizer": "AdamW (torch default, for-loop on CPU)",
                           "full_image_size": FULL_CUDA_IMAGE_SIZE if settings.device.type == "cuda" else FULL_CPU_IMAGE_SIZE,
                           "precision": "bf16 autocast" if settings.device.type == "cuda" else "fp32",
                           "guard_bytes": GUARD_BYTES, "goals": GOALS,
                           "note": "fusion encoder/decoder always checkpoint (sam3 requires it in training); "
                                   "act_ckpt toggles the kit's checkpointing as `sam3-lora train` sets it: the ViT blocks, the neck's "
                                   "convolution branches and the pixel decoder, nested inside the segmentation head that sam3 checkpoints "
                                   "as a whole; as `sam3-lora train` does, LoRA runs compute the frozen text encoder's features for the "
                                   "category names once and free the encoder (text encoder `cached`; `per step`: run at every step)"},
            "runs": rows, "ratios": ratios(rows), "goals": goals(rows)}


def _malloc(spec: dict) -> str:
    """The child's glibc allocator setting, for tables."""
    threshold = spec.get("malloc_mmap_threshold")
    return f"mmap >= {threshold // 1024} KiB" if threshold else "default"


def _is_cpu_1008(spec: dict) -> bool:
    return spec["size"] == "full" and spec["device"] == "cpu" and spec.get("image_size") == FULL_CUDA_IMAGE_SIZE


def _peak(row: dict) -> float:
    return row.get("cuda_peak_bytes") or row["peak_rss"]


def ratios(rows: list[dict]) -> list[dict]:
    """Full fine-tuning against each LoRA run of the same size, image size and checkpointing: memory and time ratios."""
    out = []
    for row in rows:
        spec = row["config"]
        if spec["preset"] == "full" or row.get("status") != "ok":
            continue
        full = next((r for r in rows if r["config"]["preset"] == "full" and r["config"]["size"] == spec["size"]
                     and r["config"]["act_ckpt"] == spec["act_ckpt"] and r["config"].get("image_size") == spec.get("image_size")
                     and r["config"].get("batch_size", 1) == spec.get("batch_size", 1)
                     and _malloc(r["config"]) == _malloc(spec)), None)
        entry = {"size": spec["size"], "preset": spec["preset"], "act_ckpt": spec["act_ckpt"], "frozen": _frozen(spec),
                 "text": _text_encoder(row), "image_size": spec.get("image_size"), "malloc": _malloc(spec),
                 "batch_size": spec.get("batch_size", 1),
                 "full_status": full.get("status") if full else "not run"}
        if full and full.get("status") == "ok":
            entry.update(full_over_lora_memory=_peak(full) / _peak(row), full_over_lora_time=full["s_per_step"] / row["s_per_step"])
        elif full and full.get("status", "").startswith("oom"):
            entry.update(full_over_lora_memory_at_least=max(full.get("peak_rss", 0), full.get("peak_rss_sampled", 0)) / _peak(row))
        out.append(entry)
    return out


def _trainer_setup(row: dict) -> bool:
    """Whether a run used what ``sam3-lora train`` does by default for the full model: activation
    checkpointing on, the frozen base stored in bf16, the category names' text features cached."""
    config = row["config"]
    return bool(config["act_ckpt"]) and config.get("frozen_dtype") == "bfloat16" and _text_encoder(row) == "cached"


def goals(rows: list[dict]) -> dict:
    """The memory goals, read from the runs of the trainer's default setup at batch 1 (``_trainer_setup``).

    On the CPU the figure is the one with glibc's default allocator, as a user gets it; a run
    with another allocator setting is named in the note, not taken for the verdict.
    """
    from sam3_lora_kit.sam3 import DEFAULT_PRESET

    result = {}
    default = [r for r in rows if r["config"]["size"] == "full" and r["config"]["preset"] == DEFAULT_PRESET and r.get("status") == "ok"
               and r["config"].get("batch_size", 1) == 1 and _trainer_setup(r)]  # the goals are at batch 1
    cuda = [r["cuda_peak_bytes"] / 1e9 for r in default if "cuda_peak_bytes" in r]
    setup = "activation checkpointing, frozen base in bf16, text features cached (the trainer's defaults)"
    result["lora_peak_gb_1008_cuda"] = {"limit": GOALS["lora_peak_gb_1008_cuda"], "value": max(cuda) if cuda else None,
                                        "met": max(cuda) <= GOALS["lora_peak_gb_1008_cuda"] if cuda else None,
                                        "note": f"torch.cuda.max_memory_allocated, bf16 autocast, {setup}" if cuda
                                        else "needs a GPU; not measured on this machine"}
    cpu_1008 = sorted((r for r in default if _is_cpu_1008(r["config"])), key=lambda r: r["peak_rss"])
    glibc = [r for r in cpu_1008 if _malloc(r["config"]) == "default"]
    value = max(r["peak_rss"] for r in glibc) / 1e9 if glibc else None
    by_malloc = "; ".join(f"{r['peak_rss'] / 1e9:.2f} GB with malloc {_malloc(r['config'])}" for r in cpu_1008)
    result["lora_peak_gb_1008_cpu"] = {
        "limit": GOALS["lora_peak_gb_1008_cpu"], "value": value,
        "met": None if value is None else value <= GOALS["lora_peak_gb_1008_cpu"],
        "note": ("the same configuration on the CPU: whole-process peak RSS (runtime and libraries included), "
                 f"fp32 compute, {setup}; GB = 1e9 bytes; glibc's default allocator decides the verdict; {by_malloc}") if cpu_1008
        else "not run (full run on a CPU only)"}
    result["full_over_lora_memory"] = _full_over_lora_goal(ratios(rows), DEFAULT_PRESET)
    return result


def _full_over_lora_goal(entries: list[dict], default_preset: str) -> dict:
    """The memory goal at the largest image size where both were measured (the official 1008 px
    when it was), in the best configuration there; every other measured ratio is listed in the note."""
    measured = []
    for entry in entries:  # the goal is about the full-size model (the tiny one's RSS is mostly the runtime)
        value = entry.get("full_over_lora_memory", entry.get("full_over_lora_memory_at_least"))
        if entry["preset"] == default_preset and entry["size"] == "full" and entry.get("batch_size", 1) == 1 and value is not None:
            measured.append((entry.get("image_size") or 0, value, entry))
    if not measured:
        return {"limit": GOALS["full_over_lora_memory"], "value": None, "met": None, "at_least": False, "act_ckpt": None,
                "image_size": None, "note": "full-size runs are not part of --quick"}
    measured.sort(key=lambda item: (-item[0], -item[1]))  # largest image size first, the best ratio there first
    (image_size, value, best), others = measured[0], measured[1:]

    def describe(size: int, entry: dict) -> str:
        malloc = "" if entry.get("malloc", "default") == "default" else f", malloc {entry['malloc']}"
        text = "" if entry.get("text") == "cached" else f", text encoder {entry.get('text', 'per step')}"
        return f"{size} px, act. ckpt {'on' if entry['act_ckpt'] else 'off'}, LoRA's frozen base in {entry['frozen']}{text}{malloc}"

    note = f"full-size, {describe(image_size, best)}"
    if others:
        note += "; also measured: " + "; ".join(f"{v:.2f} at {describe(s, e)}" for s, v, e in others)
    return {"limit": GOALS["full_over_lora_memory"], "value": value, "met": value >= GOALS["full_over_lora_memory"],
            "at_least": "full_over_lora_memory_at_least" in best, "act_ckpt": best["act_ckpt"], "image_size": image_size,
            "note": note}


def project_1008_bf16(row: dict) -> dict | None:
    """The memory model carried from a fp32 CPU run (504 or 1008 px) to 1008 px under bf16 autocast on CUDA.

    Parameters keep their stored precision (fp32, or bf16 for frozen weights stored so), gradients
    and AdamW state stay fp32 (autocast does not cast them); activations
    scale with the tokens (x4: attention on CUDA uses fused kernels whose saved state is linear
    in the tokens) and halve in bf16; no runtime term (``max_memory_allocated`` counts tensors
    only). A projection, to be replaced by the CUDA measurement.
    """
    model = row.get("memory_model")
    if not model or row["config"]["size"] != "full" or row["config"]["device"] != "cpu":
        return None
    scale = (FULL_CUDA_IMAGE_SIZE / row["image_size"]) ** 2 * 0.5
    activations = model["activations"] * scale
    steady = model["weights"] + model["adamw"] + max(activations, model["gradients"])
    return {"activations": activations, "predicted_peak": steady}


# ----------------------------------------------------------------------------------- report
def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f}"


def report(result: dict, out_dir) -> str:
    body = dict(result["result"])
    body["runs"] = [{**row, "memory_model": memory_model(row)} for row in body["runs"]]
    body["ratios"], body["goals"] = ratios(body["runs"]), goals(body["runs"])  # derived from the runs by this code
    params = body["parameters"]
    cuda = any("cuda_peak_bytes" in row for row in body["runs"])
    full_sizes = sorted({row["config"]["image_size"] for row in body["runs"] if row["config"].get("size") == "full"
                         and row["config"].get("image_size")} or {params["full_image_size"]})
    lines = [f"## {TITLE}{' on CUDA' if cuda else ''}", "",
             f"One process per configuration; peak RSS is the process's `VmHWM` (its whole resident peak: runtime, weights, "
             f"gradients, optimizer state, activations). Batch 1 unless the batch column says otherwise, rank {params['rank']}, alpha {params['alpha']}, "
             f"{params['optimizer']}; full-size model randomly initialised, at {' and '.join(map(str, full_sizes))} px "
             f"({params['precision']}). {params['note']}." + (
                 " CUDA peak: `torch.cuda.max_memory_allocated` over the last timed step (tensors only; the CUDA "
                 "context and the allocator's cache are not in it); seconds per step by CUDA events after a synchronise." if cuda else ""), ""]
    rows = []
    for row in body["runs"]:
        spec = row["config"]
        ok = row.get("status") == "ok"
        rows.append([spec["size"], spec["preset"], "on" if spec["act_ckpt"] else "off", _frozen(spec), _text_encoder(row),
                     spec.get("image_size") or "112", spec.get("batch_size", 1), _malloc(spec), row.get("status", "")[:60],
                     _gib(row.get("peak_rss")) if "peak_rss" in row else "n/a",
                     _gib(row.get("cuda_peak_bytes")) if row.get("cuda_peak_bytes") else "",
                     f"{row['s_per_step']:.2f}" if ok else "n/a",
                     f"{spec['warmup']}+{spec['steps']}",
                     f"{row['params_trainable']:,}" if ok else "n/a",
                     f"{row['percent_trainable']:.3f}" if ok else "n/a",
                     f"{row['trainable_bytes'] / 2**20:.1f}" if ok else "n/a",
                     f"{row['load_average_at_start'][0]:.1f}" if row.get("load_average_at_start") else "n/a"])
    lines.append(markdown_table(["model", "preset", "act. ckpt", "frozen weights", "text encoder", "px", "batch", "malloc", "status", "peak RSS GiB", "CUDA peak GiB",
                                 "s/step", "warm-up+timed", "trainable", "trainable %", "trainable MiB (fp32)",
                                 "load avg at start"], rows))
    if any(r["config"]["warmup"] == 0 and r.get("status") == "ok" for r in body["runs"]):
        lines += ["", "Runs marked 0+1 time a single step with no warm-up: it includes first-call overhead (allocator "
                  "growth, AdamW state allocation, lazy initialisation). Seconds per step on a shared 2-core machine move "
                  "with its load (last column), so compare times only between rows of similar load; peak memory does not "
                  "depend on load."]
    lines += ["", "### Full fine-tuning against LoRA (same model, same checkpointing)", ""]
    ratio_rows = [[e["size"], e.get("image_size") or "112", e.get("batch_size", 1), e.get("malloc", "default"), e["preset"], "on" if e["act_ckpt"] else "off", e.get("frozen", "fp32"),
                   e.get("text", "per step"), f"{e['full_over_lora_memory']:.2f}" if "full_over_lora_memory" in e else
                   (f">= {e['full_over_lora_memory_at_least']:.2f}" if "full_over_lora_memory_at_least" in e else "n/a"),
                   f"{e['full_over_lora_time']:.2f}" if "full_over_lora_time" in e else "n/a", e["full_status"][:50]]
                  for e in body["ratios"]]
    lines.append(markdown_table(["model", "px", "batch", "malloc", "LoRA preset", "act. ckpt", "LoRA frozen weights", "LoRA text encoder", "full / LoRA peak memory", "full / LoRA s/step", "full run"], ratio_rows))
    lines += ["", "### Memory model against measurement (GiB)", "",
              "weights = parameters x their bytes (4 B, or 2 B for frozen weights stored in bf16; a cached text encoder's are gone); gradients = trainable x 4 B; AdamW = 2 x trainable x 4 B; activations = "
              "ViT blocks x bytes one block saves (or its input when checkpointed, plus one block recomputed) + what "
              "the rest of the model saves; runtime = RSS after the build less the weights (0 on CUDA, whose peak counts tensors only). Single-step runs: runtime + weights + "
              "max(activations, gradients + AdamW); with a warm-up step: runtime + weights + AdamW + max(activations, gradients). "
              "measured: on the CPU, the largest peak RSS of the training steps' phases (forward, backward, optimizer step; "
              "`VmHWM` reset between them through `/proc/self/clear_refs`), and `measured in` the phase that held it; "
              "`build peak`: the peak RSS before the first step (building the model in float32, injecting LoRA, storing "
              "frozen weights in bf16), which the memory model does not cover; runs without phases compare the whole "
              "process's peak." + (
                  " On CUDA, `gap` (measured less predicted) is memory the model does not count: what lives only inside "
                  "backward (the recomputed checkpointed regions' activations and the gradients flowing through them), "
                  "and in full fine-tuning the gradients filling while those are still alive." if cuda else ""), ""]
    model_rows = []
    for row in body["runs"]:
        model = row.get("memory_model")
        if not model:
            continue
        spec = row["config"]
        model_rows.append([spec["size"], spec.get("image_size") or "112", _malloc(spec), spec["preset"], "on" if spec["act_ckpt"] else "off", _frozen(spec), _text_encoder(row), _gib(model["runtime"]),
                           _gib(model["weights"]), _gib(model["gradients"]), _gib(model["adamw"]),
                           f"{model['activations_per_vit_block'] / 2**20:.1f}", _gib(model["activations"]),
                           _gib(model["predicted_peak"]), _gib(model["measured_peak"]), model.get("peak_phase") or "",
                           f"{model['measured_over_predicted']:.2f}", _gib(model["measured_peak"] - model["predicted_peak"]),
                           _gib(model.get("build_peak"))])
    lines.append(markdown_table(["model", "px", "malloc", "preset", "act. ckpt", "frozen weights", "text encoder", "runtime", "weights", "gradients", "AdamW",
                                 "MiB / ViT block", "activations", "predicted", "measured", "measured in", "measured / predicted", "gap",
                                 "build peak"], model_rows))
    projected = [(row, project_1008_bf16(row)) for row in body["runs"]]
    projected = [(row, p) for row, p in projected if p]
    if projected:
        lines += ["", "### Projection to 1008 px, bf16 autocast, CUDA (memory model only, not measured)", "",
                  " ".join(project_1008_bf16.__doc__.split("\n\n")[1].split()), ""]
        lines.append(markdown_table(["measured at px", "malloc", "preset", "act. ckpt", "frozen weights", "text encoder", "activations GiB",
                                     "predicted peak GiB (tensors)"],
                                    [[r["image_size"], _malloc(r["config"]), r["config"]["preset"], "on" if r["config"]["act_ckpt"] else "off",
                                      _frozen(r["config"]), _text_encoder(r), _gib(p["activations"]), _gib(p["predicted_peak"])]
                                     for r, p in projected]))
    lines += ["", "### Goals", ""]
    goal_rows = []
    for key, goal in body["goals"].items():
        value = goal["value"]
        shown = "n/a" if value is None else (f">= {value:.2f}" if goal.get("at_least") else f"{value:.2f}")
        goal_rows.append([key, goal["limit"], shown, {True: "yes", False: "no", None: "not measured"}[goal["met"]], goal.get("note") or ""])
    lines.append(markdown_table(["goal", "limit", "measured", "met", "note"], goal_rows))
    plot = _plot(body, Path(out_dir))
    if plot:
        lines += ["", f"![peak memory and seconds per step]({plot})"]
    return "\n".join(lines)


def _plot(body: dict, out_dir: Path) -> str | None:
    rows = [r for r in body["runs"] if "peak_rss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['config']['size']}\n{r['config']['preset']}\n{'ckpt' if r['config']['act_ckpt'] else 'no ckpt'}"
              f"{' bf16' if _frozen(r['config']) == 'bf16' else ''}{' text/step' if _text_encoder(r) == 'per step' else ''}" for r in rows]
    colors = ["tab:red" if r["config"]["preset"] == "full" else "tab:blue" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rows) * 2), 4))
    cuda = any("cuda_peak_bytes" in r for r in rows)
    axes[0].bar(range(len(rows)), [_peak(r) / GIB for r in rows], color=colors)
    for i, r in enumerate(rows):
        if r.get("status") != "ok":
            axes[0].text(i, _peak(r) / GIB, "OOM" if r["status"].startswith("oom") else "fail", ha="center", va="bottom")
        model = r.get("memory_model")
        if model:
            axes[0].plot([i - 0.4, i + 0.4], [model["predicted_peak"] / GIB] * 2, color="black", linewidth=1)
    axes[0].set_ylabel(f"{'CUDA max allocated' if cuda else 'peak RSS'} (GiB); black: memory model")
    axes[1].bar(range(len(rows)), [r.get("s_per_step", 0) for r in rows], color=colors)
    axes[1].set_ylabel("seconds per step")
    for ax in axes:
        ax.set_xticks(range(len(rows)), labels, fontsize=6)
    fig.suptitle("LoRA (blue) against full fine-tuning (red)")
    fig.tight_layout()
    name = f"{NAME}_cuda.png" if cuda else f"{NAME}.png"
    fig.savefig(out_dir / name, dpi=100)
    plt.close(fig)
    return name


def _main() -> int:
    parser = argparse.ArgumentParser(description="one configuration of the training-step benchmark (internal)")
    parser.add_argument("--worker", required=True, help="the configuration as JSON")
    parser.add_argument("--result", required=True, type=Path, help="where to write the figures")
    args = parser.parse_args()
    figures = worker(json.loads(args.worker))
    args.result.write_text(json.dumps(figures), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
