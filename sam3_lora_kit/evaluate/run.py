"""Run a SAM 3 model over a dataset or one image with text prompts: ``evaluate_coco`` and ``predict``.

Every image is prompted with every category name (``BatchBuilder(all_categories=True)``), so
each query is one (image, prompt) pair; ``postprocess`` turns the model's output into one dict
per query (``masks``, ``boxes``, ``scores = sigmoid(logit) x sigmoid(presence)``, ``image_id``,
``category_id``) and ``evaluate.coco`` scores them with pycocotools.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from sam3_lora_kit.evaluate.coco import coco_ground_truth, coco_map, predictions_to_coco_results, prompt_discrimination
from sam3_lora_kit.runtime import autocast_context, autocast_dtype

__all__ = ["evaluate_coco", "iter_predictions", "load_image", "load_model", "predict"]


def _postprocess(outputs: Any, batch: Any) -> list[dict]:
    from sam3_lora_kit import sam3 as kit_sam3

    return kit_sam3.postprocess(outputs, batch)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_image_size(model: nn.Module, image_size: int | None) -> int:
    size = image_size or getattr(model, "image_size", None)
    if size is None:
        raise ValueError("image_size is unknown: pass image_size= (the model was not built by build_sam3)")
    return int(size)


@torch.no_grad()
def iter_predictions(
    model: nn.Module,
    samples: Sequence[dict] | Any,
    category_names: Sequence[str],
    image_size: int | None = None,
    batch_size: int = 2,
    precision: str = "auto",
    progress: bool = False,
    desc: str = "predict",
) -> Iterator[tuple[dict, list[dict]]]:
    """Yield ``(sample, queries)`` per image: ``queries`` is ``postprocess``'s list for that image,
    one dict per category name (``masks (Q, H, W)`` in the sample's pixel frame, ``boxes (Q, 4)``
    xyxy, ``scores (Q,)``). The model runs in eval mode without gradients; its mode is restored."""
    from sam3.model.utils.misc import copy_data_to_device

    from sam3_lora_kit.sam3.batches import BatchBuilder

    builder = BatchBuilder(category_names, _model_image_size(model, image_size), all_categories=True, flip_prob=0.0)
    device = _model_device(model)
    dtype = autocast_dtype(device) if precision == "auto" else None
    was_training = model.training
    model.eval()
    indices = range(len(samples))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(samples), desc=desc, leave=False)
    try:
        for start in range(0, len(indices), batch_size):
            chunk = [samples[i] for i in indices[start:start + batch_size]]
            batch = copy_data_to_device(builder(chunk), device, non_blocking=True)
            with autocast_context(device, dtype):
                outputs = model(batch)
            queries = _postprocess(outputs, batch)
            for sample in chunk:
                image_id = int(sample["image_id"])
                mine = [q for q in queries if int(q["image_id"]) == image_id]
                yield sample, [_to_cpu(q) for q in mine]
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)


def _to_cpu(query: dict) -> dict:
    out = {}
    for key, value in query.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu")
            if value.is_floating_point() and value.dtype != torch.float32:
                value = value.float()
        out[key] = value
    return out


def _keep_above(query: dict, score_threshold: float) -> dict:
    """A query with only its detections scoring at least ``score_threshold`` (what a picture shows)."""
    keep = query["scores"] >= score_threshold
    return {**query, "masks": query["masks"][keep], "boxes": query["boxes"][keep], "scores": query["scores"][keep]}


def evaluate_coco(
    model: nn.Module,
    dataset: Any,
    image_size: int | None = None,
    batch_size: int = 2,
    score_threshold: float = 0.5,
    max_detections: int = 100,
    max_images: int | None = None,
    keep_predictions: bool = False,
    precision: str = "auto",
    progress: bool = True,
    desc: str = "evaluate",
) -> dict:
    """COCO segm and bbox mAP of ``model`` on ``dataset`` (a ``CocoSegmentationDataset``), prompting
    every image with every category name; plus the prompt-discrimination rate.

    Returns ``{"segm": {...}, "bbox": {...}, "prompt_discrimination": {...}, "segm_mAP",
    "bbox_mAP", "num_images", "num_queries", "seconds"}``; ``segm``/``bbox`` hold the twelve
    COCO numbers (``mAP``, ``mAP_50``, ...) and ``per_class`` AP by name. With
    ``keep_predictions`` also ``"predictions"``: every query's detections scoring at least
    ``score_threshold`` (the format ``MaskBrowser`` reads)."""
    for name, value in (("batch_size", batch_size), ("max_images", max_images)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    category_names = list(dataset.category_names)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    if count == 0:
        raise ValueError(f"{getattr(dataset, 'coco_path', 'dataset')}: no images to evaluate")
    subset = _Subset(dataset, count)
    start = time.perf_counter()
    results: list[dict] = []
    kept: list[dict] = []
    present: dict[int, set[int]] = {}
    samples_for_gt: list[dict] = []
    discrimination_queries: list[dict] = []
    num_queries = 0
    for sample, queries in iter_predictions(model, subset, category_names, image_size, batch_size, precision, progress, desc):
        samples_for_gt.append({k: sample[k] for k in ("image", "image_id", "file_name", "masks", "boxes", "category_ids")})
        present[int(sample["image_id"])] = {int(c) for c in sample["category_ids"].tolist()}
        results.extend(predictions_to_coco_results(queries, max_detections=max_detections))
        discrimination_queries.extend({"image_id": q["image_id"], "category_id": q["category_id"], "scores": q["scores"]} for q in queries)
        num_queries += len(queries)
        if keep_predictions:
            kept.extend(_keep_above(q, score_threshold) for q in queries)
    ground_truth = coco_ground_truth(samples_for_gt, category_names)
    segm = coco_map(ground_truth, results, "segm")
    bbox = coco_map(ground_truth, results, "bbox")
    metrics = {
        "segm_mAP": segm["mAP"],
        "bbox_mAP": bbox["mAP"],
        "segm": segm,
        "bbox": bbox,
        "prompt_discrimination": prompt_discrimination(discrimination_queries, present, score_threshold),
        "num_images": count,
        "num_queries": num_queries,
        "seconds": time.perf_counter() - start,
    }
    if keep_predictions:
        metrics["predictions"] = kept
    return metrics


class _Subset:
    """The first ``count`` items of ``dataset`` (keeps ``len`` and indexing, nothing else)."""

    def __init__(self, dataset: Any, count: int) -> None:
        self.dataset, self.count = dataset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.dataset[index]


def load_image(image: Any) -> torch.Tensor:
    """A path, PIL image, ``(H, W, 3)`` array or ``(3, H, W)`` tensor as a ``uint8 (3, H, W)`` tensor."""
    if isinstance(image, (str, Path)):
        from PIL import Image

        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        with Image.open(path) as pil:
            image = pil.convert("RGB")
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(f"image array must be (H, W, 3), got shape {array.shape}")
        if array.dtype != np.uint8:
            array = np.clip(array * (255.0 if array.max(initial=0) <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return torch.from_numpy(np.array(array[..., :3], copy=True)).permute(2, 0, 1).contiguous()  # (3, H, W)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got shape {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            scale = 255.0 if float(image.max()) <= 1.0 else 1.0
            image = (image.float() * scale).clamp(0, 255).to(torch.uint8)
        return image
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def predict(
    model: nn.Module,
    image: Any,
    prompts: str | Sequence[str],
    score_threshold: float = 0.5,
    image_size: int | None = None,
    precision: str = "auto",
) -> dict:
    """Segment what each text prompt names in one image.

    ``image``: a path, PIL image, ``(H, W, 3)`` array or ``(3, H, W)`` uint8 tensor. Returns
    ``{prompt: {"masks": (N, H, W) bool, "boxes": (N, 4) xyxy pixels, "scores": (N,)}}`` with the
    detections scoring at least ``score_threshold``, best first, in the image's own pixel frame."""
    prompts = [prompts] if isinstance(prompts, str) else list(dict.fromkeys(prompts))  # unique, in order
    if not prompts or any(not str(p).strip() for p in prompts):
        raise ValueError(f"prompts must be non-empty strings, got {prompts!r}")
    pixels = load_image(image)  # (3, H, W)
    height, width = pixels.shape[-2:]
    sample = {
        "image": pixels, "image_id": 0, "file_name": str(image) if isinstance(image, (str, Path)) else "image",
        "masks": torch.zeros(0, height, width, dtype=torch.bool), "boxes": torch.zeros(0, 4),
        "category_ids": torch.zeros(0, dtype=torch.int64), "category_names": [],
    }
    _, queries = next(iter_predictions(model, [sample], prompts, image_size, batch_size=1, precision=precision))
    out: dict[str, dict] = {}
    for query in queries:
        kept = _keep_above(query, score_threshold)
        order = torch.argsort(kept["scores"], descending=True)
        out[prompts[int(query["category_id"]) - 1]] = {k: kept[k][order] for k in ("masks", "boxes", "scores")}
    return out


def load_model(config: Any, adapter: str | Path | None = None) -> nn.Module:
    """The model a run trained: ``build_sam3`` as ``config`` (a ``TrainConfig``, mapping or YAML
    path) says, seeded like the trainer (so a random-init base is the same one), then, with
    ``adapter``, the LoRA layers its metadata describes (preset, rank, alpha, qkv) and its weights."""
    from sam3_lora_kit.lora import load_adapter, read_adapter_metadata
    from sam3_lora_kit.runtime import pick_device, set_seed
    from sam3_lora_kit.sam3 import apply_lora, build_sam3
    from sam3_lora_kit.train.trainer import as_config, resolve_model_size

    config = as_config(config)
    device = pick_device(config.device)
    meta = read_adapter_metadata(adapter) if adapter is not None else {}
    user = meta.get("user", {}) if isinstance(meta.get("user"), dict) else {}
    model_size = user.get("model_size") or resolve_model_size(config, device)
    image_size = config.image_size or user.get("image_size")
    set_seed(config.seed)  # the trainer seeds before it builds: the same random base
    model = build_sam3(model_size, checkpoint=config.checkpoint, device=device, image_size=image_size)
    if adapter is not None:
        apply_lora(model, preset=user.get("preset", config.preset), rank=int(user.get("rank", config.rank)),
                   alpha=float(user.get("alpha", config.alpha)), target_modules=user.get("target_modules", config.target_modules),
                   qkv=user.get("qkv", config.qkv))
        load_adapter(model, adapter)
    model.model_size = model_size
    return model.to(device).eval()
