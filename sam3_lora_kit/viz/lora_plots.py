"""Figures for the LoRA notebooks: parameter count against rank, singular-value spectra, scaling
conventions, loss curves. Each function takes plain numbers and returns a ``matplotlib`` Figure
(not registered with pyplot, so a notebook shows it once, where it ends a cell).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["energy_fraction", "plot_params_vs_rank", "plot_spectra", "plot_scaling_conventions", "plot_loss_curves"]

FIGSIZE = (5.0, 3.2)  # inches; with DPI a figure is a small PNG
DPI = 80


def _figure(figsize: tuple[float, float] = FIGSIZE):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _as_array(values) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=float)


def plot_params_vs_rank(ranks: Sequence[int], lora_params: Sequence[int], full_params: int, title: str = ""):
    """LoRA's trainable parameters for each rank (log-log), against the full weight's count."""
    fig, ax = _figure()
    ax.loglog(ranks, lora_params, "o-", label="LoRA: rank x (d_in + d_out)")
    ax.axhline(full_params, color="k", ls="--", label=f"full update: {full_params:,}")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="rank r", ylabel="trainable parameters", title=title or "Parameters against rank")
    ax.legend(fontsize=8)
    return fig


def energy_fraction(singular_values) -> np.ndarray:
    """Cumulative fraction of ``sum(s**2)`` captured by the first k singular values, k = 1..n."""
    s2 = _as_array(singular_values) ** 2
    return np.cumsum(s2) / s2.sum()


def plot_spectra(spectra: Mapping[str, Sequence[float]], rank: int | None = None, title: str = ""):
    """Cumulative energy of each named spectrum (singular values, largest first); a line at ``rank``."""
    fig, ax = _figure()
    for name, values in spectra.items():
        energy = energy_fraction(values)
        style = "--" if "random" in name else "-"
        ax.plot(np.arange(1, len(energy) + 1), energy, style, marker=".", ms=3, label=name)
    if rank is not None:
        ax.axvline(rank, color="grey", lw=0.8)
        ax.text(rank, 0.02, f" r = {rank}", color="grey", fontsize=8)
    ax.set(xlabel="k (number of singular values kept)", ylabel="fraction of ||dW||^2", ylim=(0, 1.02),
           title=title or "How much of the update the top k directions hold")
    ax.legend(fontsize=7)
    return fig


def plot_scaling_conventions(ranks: Sequence[int], curves: Mapping[str, Sequence[float]], ylabel: str = "update size", title: str = ""):
    """One line per scaling convention (``{"alpha / r": [...], ...}``) against rank, log-log."""
    fig, ax = _figure()
    for name, values in curves.items():
        ax.loglog(ranks, _as_array(values), "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="rank r", ylabel=ylabel, title=title or "Scaling conventions against rank")
    ax.legend(fontsize=8)
    return fig


def plot_loss_curves(curves: Mapping[str, Sequence[float]], smooth: int = 1, title: str = ""):
    """Training losses (log scale), one line per named run; ``smooth`` averages over a window of steps."""
    fig, ax = _figure()
    for name, values in curves.items():
        values = _as_array(values)
        if smooth > 1 and len(values) >= smooth:
            values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
        ax.plot(np.arange(len(values)) + (smooth if smooth > 1 else 1), values, label=name)
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title=title or "Training loss")
    ax.legend(fontsize=8)
    return fig
