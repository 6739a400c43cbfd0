"""The cost ledger: summaries gathered into CSV, Markdown and a plot; missing fields tolerated."""
from __future__ import annotations

import csv
import json

import pytest

from sam3_lora_kit.cli import main
from sam3_lora_kit.ledger import collect_runs, write_ledger

RUNS = {
    "lora_r8": {"trainable_params": 1_200_000, "trainable_percent": 0.14, "adapter_bytes": 4_800_000,
                "peak_memory_mb": 7_900.0, "seconds_per_step": 1.5, "map_before": 0.20, "map_after": 0.35,
                "device": "cuda", "model_size": "full", "preset": "default", "rank": 8},
    "nested/full_ft": {"trainable_params": 840_000_000, "peak_memory_bytes": 30 * 2**30, "map_before": 0.2,
                       "map_after": 0.4, "device": "cuda", "model_size": "full"},
    "tiny_no_eval": {"trainable_params": 10_000, "seconds_per_step": 0.2, "device": "cpu", "model_size": "tiny"},
    "empty": {},
}


@pytest.fixture
def runs_dir(tmp_path):
    for name, summary in RUNS.items():
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return tmp_path / "runs"


@pytest.mark.parametrize("run,field,expected", [
    ("lora_r8", "map_gain", pytest.approx(0.15)),
    ("lora_r8", "adapter_mb", pytest.approx(4_800_000 / 2**20)),
    ("nested/full_ft", "peak_memory_mb", pytest.approx(30 * 1024)),
    ("nested/full_ft", "map_gain", pytest.approx(0.2)),
    ("tiny_no_eval", "map_gain", None),
    ("empty", "trainable_params", None),
])
def test_rows_derive_and_tolerate_missing_fields(runs_dir, run, field, expected):
    rows = {row["run"]: row for row in collect_runs(runs_dir)}
    assert set(rows) == set(RUNS)
    assert rows[run][field] == expected


def test_cli_writes_csv_markdown_and_plot(runs_dir, tmp_path, capsys):
    out = tmp_path / "ledger"
    assert main(["ledger", str(runs_dir), "--out", str(out)]) == 0
    with (out / "ledger.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(RUNS) and {"trainable_params", "map_gain", "peak_memory_mb"} <= set(rows[0])
    markdown = (out / "ledger.md").read_text(encoding="utf-8").splitlines()
    assert markdown[0].startswith("| run |") and len(markdown) == 2 + len(RUNS)
    assert (out / "ledger.png").read_bytes()[:4] == b"\x89PNG"
    assert "4 runs" in capsys.readouterr().out


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_bad_summary_is_skipped_with_its_name(runs_dir, content, capsys):
    bad = runs_dir / "broken" / "run_summary.json"
    bad.parent.mkdir()
    bad.write_text(content, encoding="utf-8")
    assert len(collect_runs(runs_dir)) == len(RUNS)
    assert str(bad) in capsys.readouterr().err


@pytest.mark.parametrize("make", ["missing", "no_summaries"])
def test_errors_are_one_line(tmp_path, make, capsys):
    target = tmp_path / "nothing_here"
    if make == "no_summaries":
        target.mkdir()
    assert main(["ledger", str(target)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(target) in err


def test_default_out_is_runs_dir(runs_dir):
    paths = write_ledger(runs_dir)
    assert all(path.parent == runs_dir and path.is_file() for path in paths.values())


def test_cli_warns_once_per_skipped_summary(runs_dir, tmp_path, capsys):
    bad = runs_dir / "broken" / "run_summary.json"
    bad.parent.mkdir()
    bad.write_text("{not json", encoding="utf-8")
    assert main(["ledger", str(runs_dir), "--out", str(tmp_path / "ledger")]) == 0
    assert capsys.readouterr().err.count(str(bad)) == 1


def test_one_run_is_one_row_when_trainer_and_notebook_both_summarise_it(tmp_path):
    """Notebook 04 writes RUN/run_summary.json (with mAP) beside the trainer's RUN/run/run_summary.json."""
    runs = tmp_path / "runs"
    for rank in (2, 4):
        adapter = str(runs / f"rank{rank}" / "run" / "adapter.safetensors")
        trainer = {"adapter_path": adapter, "rank": rank, "trainable_params": 100 * rank}
        notebook = {**trainer, "map_before": 0.1, "map_after": 0.1 + rank / 100}
        for folder, summary in ((runs / f"rank{rank}" / "run", trainer), (runs / f"rank{rank}", notebook)):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    other = runs / "cli_only" / "run_summary.json"  # a run trained by the CLI alone: its only summary stays
    other.parent.mkdir()
    other.write_text(json.dumps({"adapter_path": str(other.parent / "adapter.safetensors"), "rank": 8}), encoding="utf-8")
    rows = collect_runs(runs)
    assert [row["run"] for row in rows] == ["cli_only", "rank2", "rank4"]
    assert [row["map_gain"] for row in rows] == [None, pytest.approx(0.02), pytest.approx(0.04)]


def test_runs_side_by_side_stay_apart_when_their_adapter_path_strings_agree(tmp_path):
    """Runs trained from different working folders with the default, relative output_dir name the same adapter."""
    runs = tmp_path / "runs"
    for rank in (4, 16):
        folder = runs / f"rank{rank}"
        folder.mkdir(parents=True)
        summary = {"adapter_path": "runs/sam3-lora/adapter.safetensors", "rank": rank, "map_before": 0.1, "map_after": 0.2}
        (folder / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    assert [(row["run"], row["rank"]) for row in collect_runs(runs)] == [("rank16", 16), ("rank4", 4)]


def test_evaluated_summary_wins_over_a_fuller_one(tmp_path):
    """A sparse notebook summary with the mAP figures is kept over the trainer's longer one without them."""
    run = tmp_path / "runs" / "r8"
    adapter = str(run / "run" / "adapter.safetensors")
    trainer = {"adapter_path": adapter, "rank": 8, "trainable_params": 800, "steps": 40, "device": "cpu",
               "seconds_per_step": 0.3, "peak_memory_mb": 900.0, "precision": "fp32"}
    notebook = {"adapter_path": adapter, "map_before": 0.1, "map_after": 0.25}
    for folder, summary in ((run / "run", trainer), (run, notebook)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    [row] = collect_runs(tmp_path / "runs")
    assert row["map_gain"] == pytest.approx(0.15)


def test_fields_of_the_wrong_type_are_left_blank_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "runs" / "odd"
    folder.mkdir(parents=True)
    summary = {"rank": "lots", "trainable_params": {"a": 1}, "peak_memory_mb": "nan", "seconds_per_step": [8],
               "map_before": 0.1, "map_after": "inf", "device": 3, "preset": "all-attn", "steps": 40,
               "memory_kind": "process RSS"}
    (folder / "run_summary.json").write_text(json.dumps(summary), encoding="utf-8")
    paths = write_ledger(tmp_path / "runs", tmp_path / "out")
    [row] = collect_runs(tmp_path / "runs")
    for name in ("rank", "trainable_params", "peak_memory_mb", "seconds_per_step", "map_after", "map_gain", "device"):
        assert row[name] is None, name
    assert row["steps"] == 40 and isinstance(row["steps"], int) and row["preset"] == "all-attn"
    assert row["memory_kind"] == "process RSS"
    err = capsys.readouterr().err
    assert "rank is 'lots', not a number" in err and "device is 3, not text" in err and str(folder / "run_summary.json") in err
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "lots" not in markdown and "nan" not in markdown and "| memory measured as |" in markdown
