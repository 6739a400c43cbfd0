"""The kit's main job: the whole pipeline on the bundled sample, and where the results are.

``python3 kit.py demo`` (or ``python -m sam3_lora_kit.demo [--output DIR]``) runs, with papermill,
notebook ``04_sam3_lora_finetune`` on the bundled sample: convert the Roboflow export to clean
COCO, build SAM 3 (``tiny`` on a CPU; ``full`` on a GPU when ``--checkpoint`` gives the weights),
put LoRA on it, evaluate (COCO mAP, prompt discrimination), train, evaluate again, and write
``run_summary.json``, ``loss_curves.png``, ``masks.png`` and the adapter into ``DIR/04_sam3_lora_finetune``.
The two LoRA teaching notebooks (``01``, ``02``: CPU, seconds each) run first; ``--skip-teaching``
leaves them out. Every executed notebook is kept in ``DIR`` with its outputs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEACHING_NOTEBOOKS = ("01_lora_maths.ipynb", "02_lora_injection_toy_transformer.ipynb")
PIPELINE_NOTEBOOK = "04_sam3_lora_finetune.ipynb"
PIPELINE_FOLDER = "04_sam3_lora_finetune"


def run_notebook(name: str, output_dir: Path, parameters: dict | None = None) -> Path:
    """Execute ``notebooks/<name>`` with papermill into ``output_dir``; returns the executed copy."""
    import papermill

    source = REPO / "notebooks" / name
    target = output_dir / name
    papermill.execute_notebook(str(source), str(target), parameters=parameters or {}, cwd=str(source.parent), progress_bar=False)
    return target


def pipeline_parameters(output_dir: Path, args: argparse.Namespace) -> dict:
    """Notebook 04's parameters for the demo: the bundled sample, results under ``output_dir``."""
    parameters: dict = {"output_dir": str(output_dir / PIPELINE_FOLDER), "model_size": args.model_size}
    if args.checkpoint:
        parameters["checkpoint"] = str(Path(args.checkpoint).expanduser().resolve()) if args.checkpoint != "hf" else "hf"
    if args.steps is not None:
        parameters["steps"] = args.steps
    return parameters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "outputs" / "demo", help="folder for the results")
    parser.add_argument("--checkpoint", default=None, help="SAM 3 weights (sam3.pt path or 'hf'): the full model on a GPU")
    parser.add_argument("--model-size", default="auto", choices=("auto", "tiny", "full"), help="default: auto")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the notebook's)")
    parser.add_argument("--skip-teaching", action="store_true", help="run only the fine-tuning pipeline (notebook 04)")
    args = parser.parse_args(argv)
    output_dir = args.output.expanduser().resolve()
    output_dir.mkdir(parents=True, exist_ok=True)

    names = [] if args.skip_teaching else [n for n in TEACHING_NOTEBOOKS if (REPO / "notebooks" / n).is_file()]
    for name in names:
        start = time.perf_counter()
        executed = run_notebook(name, output_dir)
        print(f"ran {name} in {time.perf_counter() - start:.1f} s -> {executed}", flush=True)

    start = time.perf_counter()
    print(f"running the fine-tuning pipeline ({PIPELINE_NOTEBOOK}) on the bundled sample ...", flush=True)
    executed = run_notebook(PIPELINE_NOTEBOOK, output_dir, pipeline_parameters(output_dir, args))
    results = output_dir / PIPELINE_FOLDER
    summary = json.loads((results / "run_summary.json").read_text(encoding="utf-8"))
    print(f"ran {PIPELINE_NOTEBOOK} in {time.perf_counter() - start:.1f} s -> {executed}")
    print(f"  SAM 3 {summary['model_size'].upper()} on {summary['device']}: {summary['trainable_params']:,} trainable parameters "
          f"({summary['trainable_percent']:.2f} %), {summary['steps']} steps at {summary['seconds_per_step']:.2f} s/step, "
          f"peak memory {summary['peak_memory_mb']:,.0f} MiB")
    print(f"  loss {summary['loss_first']:.1f} -> {summary['loss_last']:.1f}; segm mAP {summary['map_before']:.3f} -> "
          f"{summary['map_after']:.3f}; bbox mAP {summary['bbox_map_before']:.3f} -> {summary['bbox_map_after']:.3f}")
    for label, key in (("summary", None), ("curves", "curves_path"), ("masks", "masks_path"), ("adapter", "adapter_path")):
        print(f"  {label:8s} {results / 'run_summary.json' if key is None else summary[key]}")
    print(f"\nResults are in {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
