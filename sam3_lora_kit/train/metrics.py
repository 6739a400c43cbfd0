"""The metrics log (one JSON line per optimizer step), memory readings and ``run_summary.json``."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from sam3_lora_kit.train.atomic import atomic_write

__all__ = ["MetricsLog", "read_metrics", "reset_peak_memory", "peak_memory_mb", "write_run_summary", "read_run_summary"]


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (per step) on a CUDA device; a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA's max allocated bytes; on CPU the process's
    resident set size now (a per-step reading, so memory that creeps up shows in the log)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil is a dependency
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN; keep it readable
    return value


class MetricsLog:
    """Append-only JSONL: one record per optimizer step, flushed as written.

    ``MetricsLog(path, keep_until=k)`` drops the records after step ``k`` first (a resumed run
    re-does them), so the log stays one line per step.
    """

    def __init__(self, path: str | os.PathLike, keep_until: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until is None:
            self.path.write_text("", encoding="utf-8")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_until]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics log; a torn last line (a killed run) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_run_summary(path: str | os.PathLike) -> dict[str, Any]:
    """The summary at ``path`` ({} when absent); ``ValueError`` naming the file if it is not a JSON object."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: the run summary must be a JSON object")
    return summary


def write_run_summary(path: str | os.PathLike, replace: bool = False, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into the JSON object at ``path`` (created if absent), atomically.

    Top-level keys are replaced; the trainer writes its basics and the evaluation adds
    ``map_before``/``map_after`` and the like later. ``replace``: drop what the file held
    (a fresh run's summary keeps nothing of an earlier run's). Returns the written summary.
    """
    path = Path(path)
    summary = {**({} if replace else read_run_summary(path)), **{k: _plain(v) for k, v in fields.items()}}

    def write(handle) -> None:
        json.dump(summary, handle, indent=2, default=str)
        handle.write("\n")

    atomic_write(path, write)
    return summary


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
