"""Wall time of each notebook under nbval: ``pytest --nbval-lax notebooks/<nb>``, one process each.

Not part of ``--quick`` (the notebooks train models; the suite takes minutes). Goal: the whole
suite in under 10 minutes on the 2-core CPU machine.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Settings, markdown_table

NAME = "notebooks"
TITLE = "Notebooks under nbval: wall time per notebook"
# What the figures depend on (besides the shared timing code): see benchmarks/provenance.py.
SOURCES = ("notebooks", "sam3_lora_kit", "benchmarks/notebooks.py")
QUICK = False  # skipped by --quick
ROOT = Path(__file__).resolve().parents[1]
GOALS = {"suite_minutes": 10.0}


def available() -> str | None:
    try:
        import nbval  # noqa: F401
    except ImportError:
        return "nbval is not installed"
    return None


def run(settings: Settings, log=print) -> dict:
    rows = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        command = [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(notebook.relative_to(ROOT))]
        began = time.perf_counter()
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                   env={**os.environ, "MPLBACKEND": "Agg"}, timeout=1800)
        seconds = time.perf_counter() - began
        tail = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
        counts = {key: int(n) for n, key in re.findall(r"(\d+) (passed|failed|skipped|error)", tail)}
        rows.append({"notebook": notebook.name, "seconds": seconds, "returncode": completed.returncode, "summary": tail,
                     "cells": counts, "load_average_after": list(os.getloadavg())})
        log(f"  {notebook.name}: {seconds:.0f} s ({tail})")
    total = sum(row["seconds"] for row in rows)
    return {"parameters": {"command": "pytest --nbval-lax -q -p no:cacheprovider notebooks/<nb>", "goals": GOALS},
            "runs": rows, "total_s": total,
            "goals": {"suite_minutes": {"limit": GOALS["suite_minutes"], "value": total / 60,
                                        "met": total / 60 <= GOALS["suite_minutes"] and all(r["returncode"] == 0 for r in rows)}}}


def report(result: dict, out_dir) -> str:
    body = result["result"]
    rows = [[row["notebook"], f"{row['seconds']:.0f}", "yes" if row["returncode"] == 0 else f"**no** ({row['returncode']})",
             row["summary"]] for row in body["runs"]]
    rows.append(["**all**", f"{body['total_s']:.0f}", "", ""])
    goal = body["goals"]["suite_minutes"]
    return "\n".join([f"## {TITLE}", "", "Each notebook runs as its own `pytest --nbval-lax` process (its start-up included).", "",
                      markdown_table(["notebook", "seconds", "passed", "pytest summary"], rows), "",
                      f"Goal: the suite in under {goal['limit']:.0f} minutes: {goal['value']:.1f} minutes, "
                      f"{'met' if goal['met'] else 'not met'}."])
