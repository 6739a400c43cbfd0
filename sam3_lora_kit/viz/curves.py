"""``plot_training_curves``: the loss terms, learning rate and memory of a run, from its metrics log."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["plot_training_curves"]

_SKIP = {"step", "epoch", "lr", "grad_norm", "seconds", "peak_memory_mb"}


def _ema(values: Sequence[float], weight: float = 0.8) -> list[float]:
    smoothed, last = [], None
    for value in values:
        last = value if last is None else weight * last + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def plot_training_curves(metrics: Sequence[dict[str, Any]] | str | os.PathLike, terms: Sequence[str] | None = None,
                         path: str | os.PathLike | None = None):
    """A ``matplotlib.figure.Figure`` with three panels: losses (log scale; the minimised loss
    raw and smoothed, plus each term in ``terms`` or every logged term), learning rate, and peak
    memory per step (a line that climbs is a leak). ``metrics`` is a list of records or the
    path of a ``metrics.jsonl``; ``path`` also saves the figure there."""
    from matplotlib.figure import Figure

    if isinstance(metrics, (str, os.PathLike)):
        from sam3_lora_kit.train.metrics import read_metrics

        metrics = read_metrics(metrics)
    steps = [r["step"] for r in metrics]
    figure = Figure(figsize=(13, 3.6), layout="constrained")
    loss_ax, lr_ax, mem_ax = figure.subplots(1, 3)

    def finite(key: str) -> tuple[list[int], list[float]]:
        pairs = [(r["step"], r[key]) for r in metrics if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and r[key] > 0]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    names = list(terms) if terms is not None else sorted({k for r in metrics for k in r if k not in _SKIP and k != "loss"
                                                          and isinstance(r[k], (int, float))})
    for name in names[:12]:
        xs, ys = finite(name)
        if xs:
            loss_ax.plot(xs, ys, lw=0.8, alpha=0.6, label=name)
    xs, ys = finite("loss")
    if xs:
        loss_ax.plot(xs, ys, color="black", lw=0.8, alpha=0.35)
        loss_ax.plot(xs, _ema(ys), color="black", lw=2, label="loss (smoothed)")
        loss_ax.set_yscale("log")
    loss_ax.set(title="loss", xlabel="step", ylabel="loss (log scale)")
    if loss_ax.get_legend_handles_labels()[0]:  # below the panel, so it never hides the curves
        loss_ax.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    lr_ax.plot(steps, [r.get("lr") for r in metrics], color="tab:blue")
    lr_ax.set(title="learning rate", xlabel="step", ylabel="learning rate")
    mem_ax.plot(steps, [r.get("peak_memory_mb") for r in metrics], color="tab:red")
    mem_ax.set(title="peak memory per step", xlabel="step", ylabel="MiB (CUDA: max allocated; CPU: process RSS)")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
    return figure
