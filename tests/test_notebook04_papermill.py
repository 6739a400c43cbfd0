"""Notebook 04 as a batch job: papermill runs it on another dataset (a YOLO-segmentation export,
converted first) with other parameters, and its ``run_summary.json`` says what happened."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("papermill")
pytest.importorskip("sam3")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_sam3_lora_finetune.ipynb"


def test_notebook04_opens_as_the_style_guide_says():
    """Title, badge pointing at this file, a Colab-only install, then exactly one parameters cell papermill can read."""
    import nbformat
    import papermill

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# 04")
    assert f"blob/main/notebooks/{NOTEBOOK.name}" in nb.cells[0].source
    assert "google.colab" in nb.cells[1].source
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert tagged == [2]
    names = papermill.inspect_notebook(str(NOTEBOOK))
    lines = [line for line in nb.cells[2].source.splitlines() if line.strip()]
    assert len(names) == len(lines) and all(p["help"] for p in names.values())  # every line parsed, each commented
    for required in ("dataset_dir", "model_size", "checkpoint", "rank", "alpha", "preset", "steps", "lr",
                     "batch_size", "image_size", "output_dir"):
        assert required in names
    assert names["model_size"]["default"] == '"auto"'


@pytest.mark.slow
def test_notebook04_runs_under_papermill_on_a_converted_yolo_export(tmp_path):
    import papermill

    from sam3_lora_kit.data import convert_roboflow, sample_data_dir

    dataset = tmp_path / "yolo-coco"
    convert_roboflow(sample_data_dir() / "yolo-segmentation", dataset, format="yolo")
    output = tmp_path / "run"
    executed = tmp_path / "executed.ipynb"
    parameters = {"dataset_dir": str(dataset), "model_size": "tiny", "rank": 2, "alpha": 4.0, "steps": 3,
                  "lr": 1e-3, "batch_size": 1, "preset": "vision-attn", "eval_split": "test", "output_dir": str(output),
                  "activation_checkpointing": True, "frozen_dtype": "bfloat16"}
    # cwd elsewhere than notebooks/: the notebook must not depend on it
    papermill.execute_notebook(str(NOTEBOOK), str(executed), parameters=parameters, cwd=str(tmp_path),
                               progress_bar=False, kernel_name="python3")

    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["rank"] == 2 and summary["steps"] == 3 and summary["preset"] == "vision-attn"
    assert summary["model_size"] == "tiny" and summary["device"] == "cpu"
    assert summary["dataset_dir"] == str(dataset) and summary["eval_split"] == "test"
    for key in ("map_before", "map_after", "bbox_map_before", "bbox_map_after"):
        assert 0.0 <= summary[key] <= 1.0
    assert 0 < summary["trainable_percent"] < 100 and summary["trainable_params"] > 0
    assert summary["adapter_bytes"] == (output / "run" / "adapter.safetensors").stat().st_size
    assert summary["peak_memory_mb"] > 0 and summary["seconds_per_step"] > 0
    assert (output / "masks.png").stat().st_size > 0 and (output / "loss_curves.png").stat().st_size > 0
    text = executed.read_text()
    assert "MODEL SIZE: TINY" in text and "summary has every key: True" in text
    assert "frozen tensors stored in bfloat16" in text  # the memory options reached the trainer
