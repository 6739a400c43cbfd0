"""The ``eval`` and ``predict`` subcommands of ``sam3-lora``.

Both read the training configuration (``--config run.yaml``, or ``--run DIR`` for a finished
run: ``DIR/config.yaml`` and ``DIR/adapter.safetensors``), so the model is built exactly as
training built it; ``--adapter`` adds a LoRA adapter, ``--base`` leaves it out.

    sam3-lora eval --run runs/sam3-lora --split valid
    sam3-lora predict photo.jpg --prompt "yellow taxi" --prompt bus --run runs/sam3-lora --out taxi.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

_CONFIG_FILE = "config.yaml"
_ADAPTER_FILE = "adapter.safetensors"


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", metavar="DIR", help="a training run's output folder (its config.yaml and adapter.safetensors)")
    parser.add_argument("--config", metavar="YAML", help="training config (TrainConfig fields); defaults when omitted")
    parser.add_argument("--adapter", metavar="FILE", help="LoRA adapter (.safetensors) to apply to the base model")
    parser.add_argument("--base", action="store_true", help="evaluate the base model, without the run's adapter")
    parser.add_argument("--model-size", dest="model_size", default=None, help="auto | tiny | full")
    parser.add_argument("--checkpoint", default=None, help="base weights: official checkpoint path or 'hf'")
    parser.add_argument("--image-size", dest="image_size", type=int, default=None, help="input side in pixels")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--score-threshold", dest="score_threshold", type=float, default=0.5,
                        help="a detection counts (and an absent prompt fails) at this score (default 0.5)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``predict`` to the ``sam3-lora`` command line."""
    evaluate = subparsers.add_parser("eval", help="COCO segm/bbox mAP (overall, per class) and prompt discrimination on a split")
    _add_model_arguments(evaluate)
    evaluate.add_argument("--dataset-dir", dest="dataset_dir", default=None, help="clean COCO folder (default: the config's)")
    evaluate.add_argument("--split", default="valid", help="split to evaluate (default: valid)")
    evaluate.add_argument("--batch-size", dest="batch_size", type=int, default=2, help="images per forward pass")
    evaluate.add_argument("--max-images", dest="max_images", type=int, default=None, help="evaluate only the first N images")
    evaluate.add_argument("--output", metavar="JSON", help="also write the metrics to this JSON file")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=run_eval)

    predict = subparsers.add_parser("predict", help="segment what text prompts name in one image")
    predict.add_argument("image", help="an image file")
    predict.add_argument("--prompt", "-p", dest="prompts", action="append", required=True, metavar="TEXT",
                         help="a noun phrase to segment; repeat for several")
    _add_model_arguments(predict)
    predict.add_argument("--out", metavar="PNG", help="write a figure of the masks to this file")
    predict.add_argument("--json", action="store_true", help="print boxes and scores as JSON")
    predict.set_defaults(handler=run_predict)


def resolve_model_source(args: argparse.Namespace) -> tuple[Any, Path | None]:
    """``(TrainConfig, adapter path or None)`` from ``--run``/``--config``/``--adapter``/``--base`` and overrides."""
    from sam3_lora_kit.train.config import TrainConfig

    config_path = Path(args.config) if args.config else None
    adapter = Path(args.adapter) if args.adapter else None
    if args.run:
        run = Path(args.run)
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: no such run folder")
        config_path = config_path or run / _CONFIG_FILE
        if adapter is None and not args.base:
            adapter = run / _ADAPTER_FILE
            if not adapter.is_file():
                raise FileNotFoundError(f"{adapter}: the run has no adapter (did it finish?); pass --base for the base model")
    if args.base and args.adapter:
        raise ValueError("--base and --adapter contradict each other: give one")
    overrides = {key: getattr(args, key, None) for key in ("model_size", "checkpoint", "image_size", "device", "dataset_dir")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config_path is not None:
        config = TrainConfig.from_yaml(config_path, overrides)
    else:
        config = TrainConfig.from_dict(overrides, source="command line")
    return config, adapter


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``sam3-lora eval``; prints the metrics table (or JSON)."""
    from sam3_lora_kit.data import CocoSegmentationDataset
    from sam3_lora_kit.evaluate.coco import format_metrics
    from sam3_lora_kit.evaluate.run import evaluate_coco, load_model

    config, adapter = resolve_model_source(args)
    if not config.dataset_dir:
        raise ValueError("no dataset to evaluate on: pass --dataset-dir (a clean COCO folder), or --run / --config with a dataset_dir")
    dataset = CocoSegmentationDataset(config.dataset_dir, args.split)
    model = load_model(config, adapter)
    metrics = evaluate_coco(model, dataset, batch_size=args.batch_size, score_threshold=args.score_threshold,
                            max_images=args.max_images, progress=not args.no_progress)
    metrics.update(model_size=model.model_size, adapter=str(adapter) if adapter else None,
                   dataset_dir=str(config.dataset_dir), split=args.split)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        what = f"SAM 3 {model.model_size} + {adapter}" if adapter else f"SAM 3 {model.model_size} (base)"
        print(format_metrics(metrics, title=f"{what} on {config.dataset_dir}/{args.split} ({metrics['num_images']} images)"))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Handler of ``sam3-lora predict``; prints each prompt's detections, optionally draws them."""
    from sam3_lora_kit.evaluate.run import load_image, load_model, predict

    config, adapter = resolve_model_source(args)
    image = load_image(args.image)
    model = load_model(config, adapter)
    found = predict(model, image, args.prompts, score_threshold=args.score_threshold)
    if args.json:
        print(json.dumps({p: {"boxes": r["boxes"].tolist(), "scores": r["scores"].tolist()} for p, r in found.items()}, indent=2))
    else:
        for prompt, result in found.items():
            best = ", ".join(f"{s:.2f}" for s in result["scores"][:5].tolist())
            print(f"{prompt!r}: {len(result['scores'])} object(s) at score >= {args.score_threshold}" + (f" (best {best})" if best else ""))
    if args.out:
        _save_figure(image, found, args.out)
        print(f"figure: {args.out}")
    return 0


def _save_figure(image: Any, found: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from sam3_lora_kit.viz.masks import show_masks

    prompts = list(found)
    masks = [found[p]["masks"] for p in prompts]
    instances = {
        "masks": torch.cat(masks) if masks else torch.zeros(0, *image.shape[-2:], dtype=torch.bool),
        "category_ids": torch.cat([torch.full((len(found[p]["scores"]),), k + 1) for k, p in enumerate(prompts)]) if prompts else torch.zeros(0),
        "scores": torch.cat([found[p]["scores"] for p in prompts]) if prompts else torch.zeros(0),
    }
    fig, ax = plt.subplots(figsize=(6, 6))
    show_masks(image, instances, ax=ax, category_names=prompts, title=", ".join(prompts))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
