"""``evaluate_coco``, ``predict``, ``load_model`` and the ``eval``/``predict`` commands on the tiny SAM 3 (CPU)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sam3")

from sam3_lora_kit.cli import main as cli_main  # noqa: E402
from sam3_lora_kit.evaluate import run as evaluate_run  # noqa: E402
from sam3_lora_kit.evaluate.run import evaluate_coco, load_model, predict  # noqa: E402

from sam3_lora_kit.data import CocoSegmentationDataset  # noqa: E402


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    from sam3_lora_kit.data import convert_roboflow, sample_data_dir

    dst = tmp_path_factory.mktemp("eval") / "coco"
    convert_roboflow(sample_data_dir() / "coco-segmentation", dst)
    return dst


@pytest.fixture(scope="module")
def valid(coco_dir):
    return CocoSegmentationDataset(coco_dir, "valid")


@pytest.fixture(scope="module")
def run_dir(coco_dir, tmp_path_factory):
    """A finished run's folder as the trainer leaves it: config.yaml and a (non-zero) adapter."""
    from sam3_lora_kit.lora import iter_lora_layers, save_adapter
    from sam3_lora_kit.runtime import set_seed
    from sam3_lora_kit.sam3 import apply_lora, build_sam3
    from sam3_lora_kit.train import TrainConfig

    out = tmp_path_factory.mktemp("run")
    config = TrainConfig.from_dict({"dataset_dir": str(coco_dir), "output_dir": str(out), "model_size": "tiny",
                                    "device": "cpu", "rank": 2, "alpha": 4.0, "preset": "all-attn", "steps": 2, "warmup_steps": 0})
    config.to_yaml(out / "config.yaml")
    set_seed(config.seed)
    model = build_sam3("tiny", device="cpu")
    apply_lora(model, preset="all-attn", rank=2, alpha=4.0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:  # B starts at zero: give the adapter an effect
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    assert any(True for _ in iter_lora_layers(model))
    save_adapter(model, out / "adapter.safetensors", preset="all-attn", model_size="tiny", rank=2, alpha=4.0, qkv="fused",
                 target_modules=None, image_size=int(model.image_size), category_names=["circle", "square", "triangle"])
    return out, model


def test_evaluate_coco_reports_every_metric(valid, run_dir):
    _, model = run_dir
    metrics = evaluate_coco(model, valid, progress=False, keep_predictions=True)
    assert metrics["num_images"] == len(valid)
    assert metrics["num_queries"] == len(valid) * len(valid.category_names)  # every image x every prompt
    for iou_type in ("segm", "bbox"):
        assert 0.0 <= metrics[iou_type]["mAP"] <= 1.0
        assert set(metrics[iou_type]["per_class"]) == set(valid.category_names)
    assert metrics["segm_mAP"] == metrics["segm"]["mAP"]
    disc = metrics["prompt_discrimination"]
    assert disc["absent_queries"] + disc["present_queries"] == metrics["num_queries"]
    assert all((p["scores"] >= 0.5).all() for p in metrics["predictions"])
    item = valid[0]
    first = [p for p in metrics["predictions"] if p["image_id"] == item["image_id"]]
    assert len(first) == len(valid.category_names)
    assert all(p["masks"].shape[-2:] == item["image"].shape[-2:] for p in first)  # the item's pixel frame


def test_evaluate_coco_scores_one_when_the_model_returns_the_ground_truth(valid, run_dir, monkeypatch):
    """The runner's plumbing (queries per image, frames, ids) with a postprocess that answers perfectly."""
    _, model = run_dir
    truth = {int(valid[i]["image_id"]): valid[i] for i in range(len(valid))}

    def perfect(outputs, batch):
        meta = batch.find_metadatas[0]
        queries = []
        for image_id, category_id in zip(meta.original_image_id.tolist(), meta.original_category_id.tolist()):
            item = truth[int(image_id)]
            keep = item["category_ids"] == category_id
            queries.append({"image_id": int(image_id), "category_id": int(category_id), "masks": item["masks"][keep],
                            "boxes": item["boxes"][keep], "scores": torch.full((int(keep.sum()),), 0.9)})
        return queries

    monkeypatch.setattr(evaluate_run, "_postprocess", perfect)
    metrics = evaluate_coco(model, valid, progress=False)
    assert metrics["segm"]["mAP"] == pytest.approx(1.0)
    assert metrics["bbox"]["mAP"] == pytest.approx(1.0)
    assert metrics["prompt_discrimination"]["rate"] == 1.0
    assert metrics["prompt_discrimination"]["detected_rate"] == 1.0


def test_evaluate_coco_leaves_the_model_in_its_mode(valid, run_dir):
    _, model = run_dir
    model.train()
    try:
        evaluate_coco(model, valid, max_images=1, progress=False)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("image_kind", ["tensor", "array", "path"])
def test_predict_returns_masks_boxes_scores_per_prompt(valid, run_dir, image_kind, tmp_path):
    from PIL import Image

    _, model = run_dir
    image = valid[0]["image"]  # (3, H, W)
    given = {"tensor": image, "array": image.permute(1, 2, 0).numpy()}.get(image_kind)
    if image_kind == "path":
        given = tmp_path / "image.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(given)
    found = predict(model, given, ["circle", "square", "circle"], score_threshold=0.0)
    assert list(found) == ["circle", "square"]
    for result in found.values():
        n = len(result["scores"])
        assert n > 0 and result["masks"].shape == (n, *image.shape[-2:]) and result["masks"].dtype == torch.bool
        assert result["boxes"].shape == (n, 4)
        assert torch.all(result["scores"][:-1] >= result["scores"][1:])  # best first
    assert all(len(r["scores"]) == 0 for r in predict(model, image, "circle", score_threshold=1.01).values())


@pytest.mark.parametrize("prompts", [[], [""], ["  "]])
def test_predict_rejects_empty_prompts(run_dir, prompts):
    _, model = run_dir
    with pytest.raises(ValueError, match="prompts"):
        predict(model, torch.zeros(3, 16, 16, dtype=torch.uint8), prompts)


def test_load_model_rebuilds_the_run(valid, run_dir):
    out, model = run_dir
    image = valid[1]["image"]
    loaded = load_model(out / "config.yaml", out / "adapter.safetensors")
    base = load_model(out / "config.yaml")
    want = predict(model, image, ["square"], score_threshold=0.0)["square"]["scores"]
    assert torch.allclose(predict(loaded, image, ["square"], score_threshold=0.0)["square"]["scores"], want, atol=1e-5)
    assert not torch.allclose(predict(base, image, ["square"], score_threshold=0.0)["square"]["scores"], want, atol=1e-5)


def test_eval_command_writes_metrics(run_dir, tmp_path, capsys):
    out, _ = run_dir
    target = tmp_path / "metrics.json"
    assert cli_main(["eval", "--run", str(out), "--split", "test", "--max-images", "2", "--output", str(target), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "AP circle" in printed
    metrics = json.loads(target.read_text())
    assert metrics["num_images"] == 2 and metrics["split"] == "test" and metrics["adapter"].endswith("adapter.safetensors")


def test_predict_command_draws_a_figure(valid, run_dir, tmp_path, capsys):
    from PIL import Image

    out, _ = run_dir
    image = tmp_path / "shapes.png"
    Image.fromarray(valid[0]["image"].permute(1, 2, 0).numpy()).save(image)
    figure = tmp_path / "masks.png"
    code = cli_main(["predict", str(image), "-p", "circle", "-p", "triangle", "--run", str(out),
                     "--score-threshold", "0", "--out", str(figure)])
    assert code == 0 and figure.stat().st_size > 0
    assert "'circle':" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--run", "/nonexistent/run"], "no such run folder"),
        (["eval", "--run", "{run}", "--base", "--adapter", "x.safetensors"], "--base and --adapter"),
        (["predict", "/nonexistent.png", "-p", "cat", "--run", "{run}"], "no such image file"),
        (["eval", "--base", "--model-size", "tiny"], "no dataset to evaluate on: pass --dataset-dir"),
        (["eval", "--run", "{run}", "--batch-size", "0"], "batch_size must be a positive integer, got 0"),
        (["eval", "--run", "{run}", "--max-images", "-1"], "max_images must be a positive integer, got -1"),
    ],
)
def test_commands_fail_in_one_line(run_dir, argv, message, capsys):
    out, _ = run_dir
    assert cli_main([a.replace("{run}", str(out)) for a in argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
