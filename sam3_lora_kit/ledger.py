"""The cost ledger: every ``run_summary.json`` under a folder gathered into one table and one plot.

``sam3-lora ledger RUNS_DIR [--out DIR]`` writes ``ledger.csv``, ``ledger.md`` and ``ledger.png``
(mAP gain against trainable parameters and against peak memory). Summaries come from the
trainer and the evaluation (``sam3_lora_kit.train``); every field is optional here, so runs from
older or newer versions, or runs never evaluated, still get a row.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "collect_runs", "write_ledger", "register"]

SUMMARY_FILE = "run_summary.json"

# (column, header in Markdown)
COLUMNS = [
    ("run", "run"),
    ("model_size", "model"),
    ("preset", "preset"),
    ("rank", "rank"),
    ("image_size", "image px"),
    ("device", "device"),
    ("precision", "precision"),
    ("steps", "steps"),
    ("trainable_params", "trainable params"),
    ("trainable_percent", "trainable %"),
    ("adapter_mb", "adapter MiB"),
    ("peak_memory_mb", "peak memory MiB"),
    ("memory_kind", "memory measured as"),
    ("seconds_per_step", "s/step"),
    ("map_before", "mAP before"),
    ("map_after", "mAP after"),
    ("map_gain", "mAP gain"),
]


# Columns copied from a summary that must hold a number, and those that must hold text; any
# other value is left blank with a warning, so one odd summary cannot put text on a plot axis.
NUMBER_COLUMNS = ("rank", "image_size", "steps", "trainable_params", "trainable_percent", "adapter_mb",
                  "peak_memory_mb", "seconds_per_step", "map_before", "map_after")
TEXT_COLUMNS = ("model_size", "preset", "device", "precision", "memory_kind")


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, text, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _checked(summary: dict[str, Any], name: str, path: Path | None) -> Any:
    """``summary[name]`` if it has the column's type (a finite number, or text), else None with a warning."""
    value = summary.get(name)
    if value is None:
        return None
    if name in NUMBER_COLUMNS:
        number = _number(value)
        if number is not None and not isinstance(value, str):
            return int(number) if isinstance(value, int) else number
        kind = "a number"
    elif isinstance(value, str):
        return value
    else:
        kind = "text"
    where = path if path is not None else "a summary"
    print(f"sam3-lora ledger: {where}: {name} is {value!r}, not {kind}; left blank", file=sys.stderr)
    return None


def _row(summary: dict[str, Any], run: str, path: Path | None = None) -> dict[str, Any]:
    """One ledger row from one summary; fields absent from the summary, or of the wrong type, stay None."""
    row: dict[str, Any] = {name: _checked(summary, name, path) for name, _ in COLUMNS if name in NUMBER_COLUMNS + TEXT_COLUMNS}
    row["run"] = run
    adapter_bytes, peak_bytes = _number(summary.get("adapter_bytes")), _number(summary.get("peak_memory_bytes"))
    if row["adapter_mb"] is None and adapter_bytes is not None:
        row["adapter_mb"] = adapter_bytes / 2**20
    if row["peak_memory_mb"] is None and peak_bytes is not None:
        row["peak_memory_mb"] = peak_bytes / 2**20
    before, after = row["map_before"], row["map_after"]
    row["map_gain"] = after - before if before is not None and after is not None else None
    return {name: row.get(name) for name, _ in COLUMNS}


def _evaluated(summary: dict[str, Any]) -> bool:
    """Whether a summary holds both mAP figures (the notebook's adds the evaluation to the trainer's)."""
    return _number(summary.get("map_before")) is not None and _number(summary.get("map_after")) is not None


def collect_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """A row per run under ``runs_dir``: its ``run_summary.json`` files, sorted by path.

    Unreadable files are skipped with a warning. One trained adapter is one run: where several
    summaries in nested folders name the same ``adapter_path`` (the trainer's
    ``RUN/run/run_summary.json`` and the notebook's ``RUN/run_summary.json``, which adds the
    evaluation), one is kept: one that holds both mAP figures, then the one with the most fields,
    then the one nearest ``runs_dir``. Summaries in folders side by side are separate runs even when their
    ``adapter_path`` strings agree (the default, relative ``runs/sam3-lora/adapter.safetensors``).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such folder")
    summaries = []
    for path in sorted(runs_dir.rglob(SUMMARY_FILE)):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            print(f"sam3-lora ledger: skipping {path}: not valid JSON ({error})", file=sys.stderr)
            continue
        if not isinstance(summary, dict):
            print(f"sam3-lora ledger: skipping {path}: not a JSON object", file=sys.stderr)
            continue
        summaries.append((path, summary))
    groups: list[list[tuple[Path, dict]]] = []  # summaries of one run: same adapter_path, one folder inside the other
    for path, summary in sorted(summaries, key=lambda item: len(item[0].parts)):
        adapter = summary.get("adapter_path")
        group = None
        if isinstance(adapter, str) and adapter:
            group = next((g for g in groups if g[0][1].get("adapter_path") == adapter
                          and path.parent.is_relative_to(g[0][0].parent)), None)
        if group is None:
            groups.append([(path, summary)])
        else:
            group.append((path, summary))
    kept = {min(group, key=lambda item: (not _evaluated(item[1]), -sum(v is not None for v in item[1].values()),
                                          len(item[0].parts), item[0]))[0]
            for group in groups}  # each run's evaluated summary, else its fullest; then the one nearest runs_dir
    rows = []
    for path, summary in summaries:
        if path not in kept:
            continue  # another summary of the same run says more
        run = path.parent.relative_to(runs_dir).as_posix()
        rows.append(_row(summary, run if run != "." else runs_dir.name, path))
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _markdown(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(row[name]) for name, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([header, rule, *body]) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    """mAP gain against trainable parameters (log) and against peak memory, one point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=80)
    for axis, key, label, log in ((axes[0], "trainable_params", "trainable parameters", True),
                                  (axes[1], "peak_memory_mb", "peak memory (MiB)", False)):
        points = [(_number(r[key]), r["map_gain"], r["run"]) for r in rows]
        points = [(x, y, run) for x, y, run in points if x is not None and y is not None]
        if points:
            axis.scatter([x for x, _, _ in points], [y for _, y, _ in points])
            for x, y, run in points:
                axis.annotate(run, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            if log and all(x > 0 for x, _, _ in points):
                axis.set_xscale("log")
        else:
            axis.text(0.5, 0.5, f"no run has {key}\nand map_before/map_after", ha="center", va="center", fontsize=8,
                      transform=axis.transAxes)
        axis.set_xlabel(label)
        axis.set_ylabel("mAP gain (after - before)")
    fig.suptitle(f"cost ledger: {len(rows)} runs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_ledger(runs_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``ledger.csv``, ``ledger.md`` and ``ledger.png`` into ``out_dir`` (default ``runs_dir``)."""
    return _write_ledger(collect_runs(runs_dir), runs_dir, out_dir)


def _write_ledger(rows: list[dict], runs_dir: str | Path, out_dir: str | Path | None) -> dict[str, Path]:
    if not rows:
        raise ValueError(f"{runs_dir}: no {SUMMARY_FILE} found under this folder")
    out = Path(out_dir) if out_dir is not None else Path(runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "ledger.csv", "markdown": out / "ledger.md", "plot": out / "ledger.png"}
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[name for name, _ in COLUMNS])
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    paths["markdown"].write_text(_markdown(rows), encoding="utf-8")
    _plot(rows, paths["plot"])
    return paths


def _handle(args: argparse.Namespace) -> int:
    rows = collect_runs(args.runs_dir)  # once: it warns about every summary it skips
    paths = _write_ledger(rows, args.runs_dir, args.out)
    print(paths["markdown"].read_text(encoding="utf-8"), end="")
    print(f"{len(rows)} runs; wrote {paths['csv']}, {paths['markdown']}, {paths['plot']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sam3-lora ledger RUNS_DIR [--out DIR]``."""
    parser = subparsers.add_parser("ledger", help="gather every run_summary.json under a folder into a table and a plot")
    parser.add_argument("runs_dir", help="folder searched recursively for run_summary.json")
    parser.add_argument("--out", default=None, help="where ledger.csv, ledger.md and ledger.png go (default: RUNS_DIR)")
    parser.set_defaults(handler=_handle)
