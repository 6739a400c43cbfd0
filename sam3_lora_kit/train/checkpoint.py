"""Training checkpoints: written atomically, loaded without pickle, refused when they do not fit.

A checkpoint is one ``torch.save`` file ``<output_dir>/checkpoints/step_0000100.pt`` holding only
tensors and plain Python values, so it loads with ``torch.load(weights_only=True)`` (no code in
a file is ever run): the trainable tensors (the LoRA factors and any unfrozen module), the
optimizer, scheduler and grad-scaler states, the random-number states (Python, NumPy, torch CPU
and CUDA) stored as tensors, the step, the config and a fingerprint of the model size, base
weights, preset, targets, rank and alpha. It is written to a temporary file and renamed, so a
kill during a save leaves the previous checkpoint as the newest readable one.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from sam3_lora_kit.train.atomic import atomic_write
from sam3_lora_kit.train.errors import CheckpointError, OutputDirError

__all__ = [
    "FORMAT",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "resolve_resume",
    "check_fingerprint",
    "check_output_dir",
    "trainable_state",
    "restore_checkpoint",
    "remove_stale_temporaries",
    "checkpoint_dir",
]

FORMAT = "sam3-lora-kit.checkpoint.v1"
_NAME = re.compile(r"^step_(\d+)\.pt$")


# -- random-number states as tensors and plain values ----------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and every CUDA device's) generator states, pickle-free."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),  # (5056,) uint8
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back the states ``capture_rng_state`` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


# -- model state -----------------------------------------------------------------------------

def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains (LoRA factors and unfrozen modules), detached, on the CPU."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(tensors))
    extra = sorted(set(tensors) - set(params))
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r}, which does not train in this model"
        raise CheckpointError(f"{path}: the checkpoint {what} (was it made with other targets?)")
    with torch.no_grad():
        for name, param in params.items():
            if tuple(tensors[name].shape) != tuple(param.shape):
                raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, the model expects {tuple(param.shape)}")
            param.copy_(tensors[name])


# -- files -----------------------------------------------------------------------------------

def checkpoint_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The finished checkpoints in ``output_dir``, oldest first (temporary files are ignored)."""
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    config: Mapping[str, Any],
    fingerprint: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Write the checkpoint after ``step`` optimizer steps atomically; keep the newest ``keep``."""
    folder = checkpoint_dir(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.pt"
    payload = {
        "format": FORMAT,
        "step": int(step),
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": capture_rng_state(),
        "config": dict(config),
        "fingerprint": dict(fingerprint),
    }
    try:
        atomic_write(path, lambda handle: torch.save(payload, handle), binary=True)
    except OSError as error:
        raise OutputDirError(f"{path}: cannot write the checkpoint ({error.strerror or error}); free some space or choose another output_dir") from None
    for old in list_checkpoints(output_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def remove_stale_temporaries(output_dir: str | os.PathLike) -> None:
    """Delete temporary files a killed save left behind."""
    folder = checkpoint_dir(output_dir)
    if folder.is_dir():
        for stale in folder.glob(".step_*.tmp"):  # atomic_write names them .<name>.<random>.tmp
            stale.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; raise ``CheckpointError`` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated file, not a zip
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable sam3-lora-kit checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a sam3-lora-kit checkpoint (format {payload.get('format') if isinstance(payload, dict) else None!r})")
    return payload


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from: ``None``; ``"latest"`` (newest readable one in
    ``output_dir``, or None when there is none yet); or a path. Returns ``(path, payload)``."""
    if resume is None:
        return None
    if resume != "latest":
        return Path(resume), load_checkpoint(resume)
    problems = []
    for path in reversed(list_checkpoints(output_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:  # a torn file (e.g. power loss): fall back to the one before
            problems.append(str(error))
    if problems:
        raise CheckpointError(f"{checkpoint_dir(output_dir)}: no readable checkpoint ({problems[0]})")
    return None


def check_fingerprint(saved: Mapping[str, Any], current: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a checkpoint made for another model size, base weights, preset, targets, rank or alpha."""
    for key, value in current.items():
        if key in saved and saved[key] != value:
            raise CheckpointError(
                f"{path}: checkpoint was made with {key}={saved[key]!r}, this run has {key}={value!r} "
                f"(resume with the same {key}, or train into a new output_dir)")
    missing = [key for key in current if key not in saved]
    if missing:
        raise CheckpointError(f"{path}: checkpoint does not record {missing[0]!r}; it was not made by this trainer")


def restore_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike, model: nn.Module,
                       optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any) -> int:
    """Copy a loaded checkpoint into the training objects and restore the RNG states; returns its step."""
    path = Path(path)
    _load_trainable(model, payload["trainable"], path)
    try:
        optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload["scheduler"] is not None:
            scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and scaler.is_enabled() and payload["scaler"] is not None:
            scaler.load_state_dict(payload["scaler"])
    except (ValueError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"{path}: optimizer state does not fit this run ({error})") from None
    restore_rng_state(payload["rng"])
    return int(payload["step"])


def check_output_dir(output_dir: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Create ``output_dir`` and prove it can be written and holds ``need_bytes`` more, or raise
    ``OutputDirError`` now, before any training."""
    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputDirError(f"{folder}: cannot create the output folder ({error.strerror or error})") from None
    if not folder.is_dir():
        raise OutputDirError(f"{folder}: the output path exists and is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            Path(probe).unlink(missing_ok=True)
    except OSError as error:
        raise OutputDirError(f"{folder}: the output folder is not writable ({error.strerror or error})") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise OutputDirError(
            f"{folder}: only {free / 2**20:.1f} MiB free, the run needs about {need_bytes / 2**20:.1f} MiB "
            "for checkpoints and the adapter; free some space or choose another output_dir")
    return folder
