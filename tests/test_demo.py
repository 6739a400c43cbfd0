"""The main job (``python3 kit.py demo``): the pipeline on the bundled sample leaves its results where it says."""
from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("papermill")
pytest.importorskip("sam3")

from sam3_lora_kit import demo  # noqa: E402


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], {"model_size": "auto"}),
        (["--steps", "5", "--model-size", "tiny"], {"model_size": "tiny", "steps": 5}),
        (["--checkpoint", "hf"], {"model_size": "auto", "checkpoint": "hf"}),
    ],
)
def test_pipeline_parameters(tmp_path, argv, expected):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--model-size", default="auto")
    parser.add_argument("--steps", type=int)
    parameters = demo.pipeline_parameters(tmp_path, parser.parse_args(argv))
    assert parameters == {"output_dir": str(tmp_path / demo.PIPELINE_FOLDER), **expected}


@pytest.mark.slow
def test_demo_runs_the_pipeline_and_prints_where_the_results_are(tmp_path, capsys):
    assert demo.main(["--output", str(tmp_path), "--skip-teaching", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"Results are in {tmp_path}" in printed
    results = tmp_path / demo.PIPELINE_FOLDER
    summary = json.loads((results / "run_summary.json").read_text())
    assert summary["steps"] == 2 and summary["model_size"] == "tiny"
    for name in ("loss_curves.png", "masks.png", "run/adapter.safetensors", "run/metrics.jsonl"):
        assert (results / name).stat().st_size > 0, name
    assert (tmp_path / demo.PIPELINE_NOTEBOOK).is_file()
    assert re.search(r"segm mAP \d\.\d{3} -> \d\.\d{3}", printed)
