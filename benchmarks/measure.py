"""Run a Python module as a child process and measure its wall time and peak resident memory.

``measure_module(module, args)`` starts ``python -m benchmarks.measure --hwm-out FILE -- module
args...``: this wrapper runs the module as ``__main__`` and, at exit, writes its own ``VmHWM``
(the peak resident set of this program alone; ``ru_maxrss`` would also count the parent's image
that ``fork`` copied before ``exec``). Only the standard library is imported here, so the
figure is the measured command's, plus an interpreter.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def vm_bytes(pid: int | str = "self", field: str = "VmHWM") -> int:
    """``VmHWM`` or ``VmRSS`` from ``/proc/<pid>/status`` in bytes (0 when unreadable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure_module(module: str, args: list[str], timeout_s: float = 1800, cwd: Path = ROOT) -> dict:
    """Run ``python -m module args`` (through the wrapper); returns wall_s, peak_rss, returncode, output tail."""
    with tempfile.TemporaryDirectory() as tmp:
        hwm = Path(tmp) / "hwm.json"
        command = [sys.executable, "-m", "benchmarks.measure", "--hwm-out", str(hwm), "--", module, *args]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
        began = time.perf_counter()
        completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
        wall = time.perf_counter() - began
        figures = json.loads(hwm.read_text(encoding="utf-8")) if hwm.exists() else {}
    return {"wall_s": wall, "peak_rss": figures.get("peak_rss"), "inner_s": figures.get("inner_s"),
            "returncode": completed.returncode, "stdout_tail": completed.stdout[-2000:],
            "stderr_tail": completed.stderr[-2000:] if completed.returncode else ""}


def _main() -> int:
    parser = argparse.ArgumentParser(description="run MODULE as __main__ and record its peak RSS (internal)")
    parser.add_argument("--hwm-out", required=True, type=Path)
    parser.add_argument("module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    began = time.perf_counter()

    def write() -> None:
        args.hwm_out.write_text(json.dumps({"peak_rss": vm_bytes("self", "VmHWM"),
                                            "inner_s": time.perf_counter() - began}), encoding="utf-8")

    atexit.register(write)
    sys.argv = [args.module, *args.args]
    runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
