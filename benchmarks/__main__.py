"""``python -m benchmarks [--quick] [--only NAME ...] [--out DIR]``: run, write JSON, regenerate README and plots."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import Settings, machine_info
from benchmarks.provenance import code_record
from benchmarks.registry import load
from benchmarks.report import write_readme

RESULTS = Path(__file__).resolve().parent / "results"


def result_file_name(name: str, device: torch.device) -> str:
    """``<name>.json`` for CPU runs, ``<name>_cuda.json`` for GPU runs, so one never overwrites the other."""
    return f"{name}_cuda.json" if device.type == "cuda" else f"{name}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small grid (under 2 minutes on a 2-core CPU)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder (default {RESULTS})")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (default 3 quick, 5 full)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = Settings(quick=args.quick, device=device, threads=args.threads,
                        repeats=args.repeats or (3 if args.quick else 5), warmup=1)
    args.out.mkdir(parents=True, exist_ok=True)
    for module in load(args.only):
        reason = module.available() or (None if not args.quick or getattr(module, "QUICK", True) else "not part of --quick")
        if reason:
            print(f"benchmarks: skipping {module.NAME}: {reason}")
            continue
        print(f"benchmarks: {module.NAME} ({'quick' if args.quick else 'full'}, {device}, {args.threads} threads)")
        machine = machine_info(device, args.threads)
        code = code_record(module.SOURCES)  # before the run: the files it imports are the ones digested
        start = time.perf_counter()
        body = module.run(settings)
        result = {"name": module.NAME, "title": module.TITLE, "quick": args.quick, "machine": machine, "code": code,
                  "settings": {"repeats": settings.repeats, "warmup": settings.warmup, "threads": settings.threads,
                               "device": str(device), "order": "interleaved, rotated each repeat"},
                  "seconds": time.perf_counter() - start, "result": body}
        path = args.out / result_file_name(module.NAME, device)
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"benchmarks: wrote {path} ({result['seconds']:.0f} s)")
    readme = write_readme(args.out)
    print(f"benchmarks: wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
