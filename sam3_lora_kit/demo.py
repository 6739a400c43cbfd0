"""The kit's main job: run the demo pipeline on the bundled sample and say where the results are.

``python3 kit.py demo`` (or ``python -m sam3_lora_kit.demo [--output DIR]``) executes the
teaching notebooks with papermill into ``DIR`` (default ``outputs/demo``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ("01_lora_maths.ipynb", "02_lora_injection_toy_transformer.ipynb")


def run_notebook(name: str, output_dir: Path, parameters: dict | None = None) -> Path:
    """Execute ``notebooks/<name>`` with papermill into ``output_dir``; returns the executed copy."""
    import papermill

    source = REPO / "notebooks" / name
    target = output_dir / name
    papermill.execute_notebook(str(source), str(target), parameters=parameters or {}, cwd=str(source.parent), progress_bar=False)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "outputs" / "demo", help="folder for the results")
    args = parser.parse_args(argv)
    output_dir = args.output.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        start = time.perf_counter()
        executed = run_notebook(name, output_dir)
        print(f"ran {name} in {time.perf_counter() - start:.1f} s -> {executed}", flush=True)
    print(f"\nResults are in {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
