"""plot_training_curves: the same figure from records or from a metrics log's path."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from sam3_lora_kit.viz.curves import plot_training_curves  # noqa: E402

RECORDS = [
    {"step": 1, "loss": 2.0, "loss_mask": 1.5, "lr": 1e-4, "peak_memory_mb": 100.0},
    {"step": 2, "loss": 1.0, "loss_mask": 0.5, "lr": 2e-4, "peak_memory_mb": 110.0},
    {"step": 3, "loss": float("nan"), "loss_mask": 0.25, "lr": 3e-4, "peak_memory_mb": 120.0},
]


def _lines(figure) -> list[list[tuple[str, list, list]]]:
    return [[(line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()] for ax in figure.axes]


def test_curves_from_records_hold_the_logged_values(tmp_path):
    figure = plot_training_curves(RECORDS, path=tmp_path / "sub" / "curves.png")
    loss, lr, memory = _lines(figure)
    assert ("loss_mask", [1, 2, 3], [1.5, 0.5, 0.25]) in loss
    assert [xs for label, xs, _ in loss if label == "loss (smoothed)"] == [[1, 2]]  # the NaN loss is left out
    assert lr[0][1:] == ([1, 2, 3], [1e-4, 2e-4, 3e-4])
    assert memory[0][1:] == ([1, 2, 3], [100.0, 110.0, 120.0])
    assert (tmp_path / "sub" / "curves.png").stat().st_size > 0


def test_curves_from_a_log_path_match_the_records_and_skip_a_torn_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in RECORDS) + '{"step": 4, "loss"', encoding="utf-8")
    from_path, from_records = _lines(plot_training_curves(log)), _lines(plot_training_curves(RECORDS))
    assert repr(from_path) == repr(from_records)  # repr: NaN compares equal to itself there


def test_every_panel_has_a_y_label_and_the_legend_sits_below_the_loss_panel():
    figure = plot_training_curves(RECORDS)
    assert all(ax.get_ylabel() for ax in figure.axes)
    legend = figure.axes[0].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().y1 < figure.axes[0].get_window_extent().y0 + 1

