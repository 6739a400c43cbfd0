"""The training loop, independent of SAM 3: any model, a batch function and a loss function.

``fit(model, batch_fn, loss_fn, config, ...)`` runs AdamW on the trainable tensors with a
cosine schedule and warm-up, gradient accumulation and clipping, autocast on GPU, checkpoints
and exact resume, a JSONL metrics log, the loss curves, the adapter and ``run_summary.json``.
``batch_fn(i)`` returns this process's part of global micro-batch ``i`` (a pure function of
``i``: that is what makes resuming exact) and ``loss_fn(model, batch)`` returns a dict of scalar
tensors with ``"core_loss"`` (or ``"loss"``), the one that is minimised.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from sam3_lora_kit.runtime import autocast_context, autocast_dtype
from sam3_lora_kit.train import checkpoint as ckpt
from sam3_lora_kit.train.config import TrainConfig
from sam3_lora_kit.train.distributed import DistInfo, all_agree, all_reduce_step, broadcast_parameters
from sam3_lora_kit.train.errors import CheckpointError, NonFiniteLossError, OutputDirError, TrainOutOfMemoryError
from sam3_lora_kit.train.metrics import MetricsLog, peak_memory_mb, read_metrics, reset_peak_memory, write_run_summary
from sam3_lora_kit.train.schedule import cosine_with_warmup

__all__ = ["TrainResult", "fit", "resolve_precision", "LossFn", "BatchFn"]

LossFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
BatchFn = Callable[[int], Any]

ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "run_summary.json"
CURVES_FILE = "loss_curves.png"
CONFIG_FILE = "config.yaml"


@dataclass
class TrainResult:
    """What a run left behind; ``model`` holds the trained adapter."""

    output_dir: Path
    adapter_path: Path | None  # None on ranks other than 0
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]  # one record per optimizer step (whole run, resumed parts included)
    model: nn.Module
    resumed_from: int | None = None  # the step the run resumed at, if it did
    report: Any = None  # the LoRAReport, when the trainer applied the preset
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        """The minimised loss per step."""
        return [r["loss"] for r in self.metrics]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: None (full precision) off CUDA or for "fp32" (so "bf16"/"fp16" on a CPU
    train in fp32); on CUDA bf16/fp16 as asked, or for "auto" what the GPU does well
    (``runtime.autocast_dtype``: bf16 from compute capability 8, else fp16 with a grad scaler)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return autocast_dtype(device)
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision: bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or auto")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def _oom_message(config: TrainConfig, device: torch.device, step: int, peak_mb: float) -> str:
    return (
        f"out of memory at step {step} on {device} (image_size={config.image_size or 'model default'}, "
        f"batch_size={config.batch_size}, grad_accum={config.grad_accum}, preset={config.preset!r}, rank={config.rank}, "
        f"peak memory {peak_mb:,.0f} MiB): lower image_size or batch_size (raise grad_accum to keep the effective batch), "
        "set activation_checkpointing: true, or choose a smaller preset or rank")


def _loss_key(terms: Mapping[str, torch.Tensor]) -> str:
    for key in ("core_loss", "loss"):
        if key in terms:
            return key
    raise KeyError(f"loss_fn returned {sorted(terms)}; it must return 'core_loss' or 'loss'")


def _estimate_checkpoint_bytes(params: list[nn.Parameter]) -> int:
    numel = sum(p.numel() for p in params)
    return numel * 4 * 4  # parameter, two AdamW moments, adapter copy (fp32)


def fit(
    model: nn.Module,
    batch_fn: BatchFn,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    total_steps: int,
    fingerprint: Mapping[str, Any],
    device: torch.device,
    dist_info: DistInfo | None = None,
    progress: bool = True,
    epoch_of: Callable[[int], float] | None = None,
    eval_fn: Callable[[nn.Module, int], Mapping[str, Any]] | None = None,
    summary_fields: Mapping[str, Any] | None = None,
    adapter_metadata: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    curves: bool = True,
) -> TrainResult:
    """Train ``model``'s trainable tensors for ``total_steps`` optimizer steps (see the module doc).

    ``fingerprint`` (model size, preset, rank, ...) goes into every checkpoint and must match
    on resume. ``epoch_of(i)`` converts a micro-batch index into epochs for the log;
    ``eval_fn(model, step)`` runs every ``config.eval_every`` steps on rank 0 and its numbers
    join that step's metrics record. ``num_workers`` > 0 prepares micro-batches in worker
    processes (``batch_fn`` must then be picklable, or the start method ``fork``). ``curves``
    draws ``loss_curves.png`` at the end. Only rank 0 writes files.
    """
    info = dist_info or DistInfo()
    out = Path(config.output_dir)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]  # (the LoRA factors, mostly)
    if not params:
        raise ValueError("the model has no trainable parameters: apply LoRA (inject_lora / apply_lora) first")

    # Writable output folder with room for checkpoints and the adapter, before any step.
    problem: Exception | None = None
    if info.is_main:
        try:
            ckpt.check_output_dir(out, need_bytes=_estimate_checkpoint_bytes(params) * (config.keep_checkpoints + 1) + 2**20)
            ckpt.remove_stale_temporaries(out)
            if config.resume is None:
                _replace_earlier_run(out, config.overwrite)
        except OutputDirError as error:
            problem = error
    if not all_agree(problem is None, info):
        raise problem or OutputDirError(f"{out}: the output folder failed its checks on rank 0")

    dtype = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = cosine_with_warmup(optimizer, config.warmup_steps, total_steps)
    broadcast_parameters(params, info)

    start, resumed_from = 0, None
    found = ckpt.resolve_resume(config.resume, out)
    if found is not None:
        path, payload = found
        ckpt.check_fingerprint(payload["fingerprint"], fingerprint, path)
        start = resumed_from = ckpt.restore_checkpoint(payload, path, model, optimizer, scheduler, scaler)
        if start > total_steps:
            raise CheckpointError(f"{path}: checkpoint is at step {start}, beyond this run's {total_steps} steps")

    log = None
    if info.is_main:
        config.to_yaml(out / CONFIG_FILE)
        log = MetricsLog(out / METRICS_FILE, keep_until=start if resumed_from is not None else None)
    last_saved = start if resumed_from is not None else None
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    step = start
    batches = _micro_batches(batch_fn, start * config.grad_accum, total_steps * config.grad_accum, num_workers)
    try:
        for step in range(start, total_steps):
            reset_peak_memory(device)
            began = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            loss_sum, bad = 0.0, False
            for micro in range(config.grad_accum):
                batch = next(batches)
                with autocast_context(device, dtype):
                    terms = loss_fn(model, batch)
                key = _loss_key(terms)
                loss = terms[key]
                value = float(loss.detach())
                if not math.isfinite(value):
                    bad = True
                    sums.update({k: float(v.detach()) for k, v in terms.items() if v.numel() == 1})
                    break  # no backward through a NaN; every rank still joins the all-reduce
                scaler.scale(loss / config.grad_accum).backward()
                loss_sum += value / config.grad_accum
                for name, term in terms.items():
                    if torch.is_tensor(term) and term.numel() == 1:
                        sums[name] = sums.get(name, 0.0) + float(term.detach()) / config.grad_accum
            loss_sum, bad = all_reduce_step(params, loss_sum, bad, info)
            if bad:
                raise NonFiniteLossError(_nonfinite_message(step + 1, sums, out, last_saved))
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip or math.inf))
            if not math.isfinite(grad_norm) and not scaler.is_enabled():
                raise NonFiniteLossError(_nonfinite_message(step + 1, {"grad_norm": grad_norm}, out, last_saved))
            lr = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)  # skips the step (fp16) when gradients overflowed
            scaler.update()
            scheduler.step()
            done = step + 1
            seconds = time.perf_counter() - began
            record = {"step": done, "epoch": epoch_of(done * config.grad_accum) if epoch_of else None,
                      "loss": loss_sum, "lr": lr, "grad_norm": grad_norm, "seconds": seconds,
                      "peak_memory_mb": peak_memory_mb(device), **{k: v for k, v in sums.items() if k != key}}
            if eval_fn is not None and config.eval_every and done % config.eval_every == 0 and info.is_main:
                model.eval()
                record.update(eval_fn(model, done))
                model.train()
            if log is not None:
                log.write(record)
            if info.is_main and (done % config.save_every == 0 or done == total_steps):
                ckpt.save_checkpoint(out, done, model, optimizer, scheduler, scaler, config.to_dict(), fingerprint, keep=config.keep_checkpoints)
                last_saved = done
            if bar is not None:
                bar.update(1)
                if done % config.log_every == 0 or done == total_steps:
                    bar.set_postfix(loss=f"{loss_sum:.4g}", lr=f"{lr:.2e}", mem=f"{record['peak_memory_mb']:.0f}MiB")
    except Exception as error:
        if _is_oom(error):
            peak = peak_memory_mb(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            raise TrainOutOfMemoryError(_oom_message(config, device, step + 1, peak)) from error
        raise
    finally:
        if bar is not None:
            bar.close()

    metrics = read_metrics(out / METRICS_FILE) if info.is_main else []
    summary: dict[str, Any] = {}
    adapter_path = None
    if info.is_main:
        adapter_path, summary = _finish(model, out, config, device, dtype, info, metrics, summary_fields, adapter_metadata,
                                         curves, architecture=fingerprint.get("architecture"), fresh=resumed_from is None)
    return TrainResult(output_dir=out, adapter_path=adapter_path, summary=summary, metrics=metrics, model=model, resumed_from=resumed_from)


class _MicroBatches(torch.utils.data.Dataset):
    """Global micro-batches ``first .. last - 1`` as a map-style dataset, for worker processes."""

    def __init__(self, batch_fn: BatchFn, first: int, last: int) -> None:
        self.batch_fn, self.first, self.last = batch_fn, first, last

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, offset: int) -> Any:
        return self.batch_fn(self.first + offset)


def _identity(batch: Any) -> Any:
    return batch


def _micro_batches(batch_fn: BatchFn, first: int, last: int, num_workers: int) -> Iterator[Any]:
    """Micro-batches ``first .. last - 1`` in order, made here or in ``num_workers`` processes.

    The loader gets its own generator so the global torch RNG (dropout) is untouched and a
    resumed run stays exact.
    """
    if num_workers == 0:
        return (batch_fn(index) for index in range(first, last))
    loader = torch.utils.data.DataLoader(_MicroBatches(batch_fn, first, last), batch_size=None, shuffle=False,
                                         num_workers=num_workers, collate_fn=_identity, generator=torch.Generator(),
                                         persistent_workers=False, prefetch_factor=2)
    return iter(loader)


def _nonfinite_message(step: int, terms: Mapping[str, float], out: Path, last_saved: int | None) -> str:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in terms.items() if not math.isfinite(v)) or "loss is not finite"
    kept = (f"the last good checkpoint ({ckpt.checkpoint_dir(out) / f'step_{last_saved:07d}.pt'}) is kept; "
            f"resume from it with a lower lr") if last_saved else "no checkpoint was written yet"
    return f"non-finite loss at step {step} ({shown}): training stopped; {kept}, or check the data (sam3-lora inspect)"


def _finish(model: nn.Module, out: Path, config: TrainConfig, device: torch.device, dtype: torch.dtype | None,
            info: DistInfo, metrics: list[dict[str, Any]], summary_fields: Mapping[str, Any] | None,
            adapter_metadata: Mapping[str, Any] | None, curves: bool = True,
            architecture: str | None = None, fresh: bool = True) -> tuple[Path, dict[str, Any]]:
    """Save the adapter, draw the curves and write the run summary (rank 0). ``architecture``: the
    base model's fingerprint taken before training, when the model no longer has all of it
    (its frozen text encoder out, ``cache_text_features``). ``fresh``: the run did not resume, so
    its summary keeps nothing an earlier summary in ``out`` held."""
    from sam3_lora_kit.lora import count_parameters, save_adapter
    adapter_path = save_adapter(model, out / ADAPTER_FILE, base_fingerprint=architecture, **dict(adapter_metadata or {}))
    if curves:
        from sam3_lora_kit.viz.curves import plot_training_curves

        plot_training_curves(metrics, path=out / CURVES_FILE)
    trainable, total = count_parameters(model)
    seconds = [r["seconds"] for r in metrics]
    timed = seconds[1:] if len(seconds) > 1 else seconds  # the first step pays for warm-up
    fields = dict(
        trainable_params=trainable,
        total_params=total,
        adapter_path=str(adapter_path),
        adapter_bytes=adapter_path.stat().st_size,
        adapter_mb=adapter_path.stat().st_size / 2**20,
        peak_memory_mb=max((r["peak_memory_mb"] for r in metrics), default=None),
        memory_kind="cuda max allocated" if device.type == "cuda" else "process RSS",
        seconds_per_step=statistics.median(timed) if timed else None,
        steps=metrics[-1]["step"] if metrics else 0,
        loss_first=metrics[0]["loss"] if metrics else None,
        loss_last=metrics[-1]["loss"] if metrics else None,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        precision=str(dtype).replace("torch.", "") if dtype else "fp32",
        world_size=info.world_size,
        preset=config.preset,
        rank=config.rank,
        alpha=config.alpha,
        image_size=config.image_size,
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        metrics_path=str(out / METRICS_FILE),
        curves_path=str(out / CURVES_FILE) if curves else None,
    )
    fields.update(summary_fields or {})  # may give the whole model's total_params (its text encoder since taken out)
    fields["trainable_percent"] = 100.0 * fields["trainable_params"] / max(fields["total_params"], 1)
    return adapter_path, write_run_summary(out / SUMMARY_FILE, replace=fresh, **fields)


def _replace_earlier_run(out: Path, overwrite: bool) -> None:
    """Before a fresh run: stop if ``out`` holds an earlier run's checkpoints, or (``overwrite``) delete that run.

    Otherwise the new run's checkpoints would sort before the old ones and be pruned at once,
    and a later resume would pick up the old run.
    """
    earlier = ckpt.list_checkpoints(out)
    if not earlier:
        return
    if not overwrite:
        raise OutputDirError(f"{out}: holds an earlier run (checkpoint {earlier[-1].name}); continue it with resume='latest' "
                             f"(--resume), replace it with overwrite=True (--overwrite), or train into another output_dir")
    for path in [*earlier, out / ADAPTER_FILE, out / SUMMARY_FILE, out / CURVES_FILE]:
        path.unlink(missing_ok=True)
