"""``python -m benchmarks --quick`` runs end to end and writes well-formed results (no timing asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repository root
from benchmarks import lora_layers  # noqa: E402
from benchmarks.common import summarise  # noqa: E402


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    completed = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=repo_root,
                               env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def test_quick_json_structure(quick_results):
    result = json.loads((quick_results / "lora_layers.json").read_text(encoding="utf-8"))
    assert result["name"] == "lora_layers" and result["quick"] is True
    assert result["machine"]["versions"]["torch"] and result["machine"]["versions"]["peft"]
    assert result["settings"]["repeats"] >= 1
    body = result["result"]
    assert body["parameters"]["tokens_per_image"] == 72 * 72
    assert len(body["linear"]) == len(lora_layers.grid(quick=True))
    for case in body["linear"]:
        for comparison, reference in (("vs_base", "base"), ("vs_peft", "peft")):
            summary = case[comparison]
            assert {"base", "lora", "peft"} <= set(summary["median_s"])
            assert summary["ratio"][reference] == pytest.approx(1.0)
            assert all(len(times) == result["settings"]["repeats"] for times in summary["times_s"].values())
        assert case["lora_path"] in ("fused", "inplace")
        assert case["saved_bytes"]["lora"] > 0
    assert {mode for case in body["merged"] for mode in ("train", "inference") if case[mode]["ratio"]["merged"] > 0} == {"train", "inference"}
    assert all(case["vs_peft"]["ratio"]["lora"] > 0 for case in body["mha"])
    assert set(body["goals"]) == set(lora_layers.GOALS)
    assert all(isinstance(goal["met"], bool) for goal in body["goals"].values())


def test_quick_readme_and_plot(quick_results):
    readme = (quick_results / "README.md").read_text(encoding="utf-8")
    assert "| goal | limit |" in readme and "lora_layers.png" in readme
    assert (quick_results / "lora_layers.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("in_features,out_features", lora_layers.SHAPES)
def test_full_grid_covers_sam3_shapes(in_features, out_features):
    cases = lora_layers.grid(quick=False)
    ranks = {r for i, o, b, r, n in cases if (i, o) == (in_features, out_features) and b == 1 and n == 72 * 72}
    batches = {b for i, o, b, r, n in cases if (i, o) == (in_features, out_features)}
    assert ranks == {4, 8, 16, 32, 64} and {1, 4} <= batches


@pytest.mark.parametrize("times,expected", [
    ({"base": [1.0, 2.0, 1.0], "lora": [1.1, 2.2, 1.1]}, 1.1),
    ({"base": [1.0, 1.0, 1.0], "lora": [0.5, 5.0, 0.9]}, 0.9),
])
def test_summarise_pairs_repeats(times, expected):
    assert summarise(times, "base")["ratio"]["lora"] == pytest.approx(expected)
