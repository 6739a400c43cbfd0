"""``train(config)``: LoRA fine-tuning of SAM 3 on a COCO split, the thin SAM 3 layer over ``loop.fit``.

It builds the model (``build_sam3``), applies the LoRA preset (``apply_lora``), turns dataset
items into ``BatchedDatapoint`` queries (``BatchBuilder``) and minimises ``sam3``'s own loss
(``build_loss`` / ``training_step_loss``). Under ``torchrun`` each process trains on its own
slice of every batch and only rank 0 writes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from sam3_lora_kit.runtime import pick_device, set_seed
from sam3_lora_kit.train import checkpoint as ckpt
from sam3_lora_kit.train.config import ConfigError, TrainConfig
from sam3_lora_kit.train.distributed import DistInfo, init_distributed, shutdown_distributed
from sam3_lora_kit.train.loop import TrainResult, fit, resolve_precision
from sam3_lora_kit.train.sampler import EpochSampler

__all__ = ["train", "as_config", "resolve_model_size", "resolve_memory_savers", "set_activation_checkpointing", "run_fingerprint", "total_steps_for"]


def as_config(config: TrainConfig | Mapping[str, Any] | str | os.PathLike) -> TrainConfig:
    """A ``TrainConfig`` from itself, a mapping (notebook parameters) or a YAML path."""
    if isinstance(config, TrainConfig):
        config.validate()
        return config
    if isinstance(config, Mapping):
        return TrainConfig.from_dict(config)
    return TrainConfig.from_yaml(config)


def resolve_model_size(config: TrainConfig, device: torch.device) -> str:
    """``"auto"``: ``full`` when base weights (``checkpoint``) are given, on any device (SAM 3's weights
    only fit the full architecture; on a CPU a full-size step takes minutes), else ``tiny``."""
    if config.model_size != "auto":
        return config.model_size
    return "full" if config.checkpoint is not None else "tiny"


def resolve_memory_savers(config: TrainConfig, model_size: str) -> tuple[bool, str]:
    """``(activation_checkpointing, frozen_dtype)`` with ``"auto"`` resolved: both memory savers on
    for the full model (LoRA at 1008 px then fits a 16 GB GPU), off for the tiny one."""
    full = model_size == "full"
    checkpointing = full if config.activation_checkpointing == "auto" else bool(config.activation_checkpointing)
    frozen_dtype = ("bfloat16" if full else "float32") if config.frozen_dtype == "auto" else config.frozen_dtype
    return checkpointing, frozen_dtype


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The forward of a module switched by ``set_activation_checkpointing``: in training with
    gradients on, its class's forward runs under ``torch.utils.checkpoint`` (only the inputs are
    kept; the rest is recomputed in backward); otherwise it runs as is."""
    from torch.utils.checkpoint import checkpoint

    forward = type(self).forward.__get__(self)
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def _checkpoint_forward(module: nn.Module, enabled: bool) -> None:
    """Give ``module`` the checkpointed forward (an instance attribute: names and state dict do not
    change, and a deep copy keeps it bound to the copy), or take it away."""
    if enabled:
        module.forward = _checkpointed_forward.__get__(module)
    else:
        module.__dict__.pop("forward", None)


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Turn activation checkpointing of the ViT blocks, the neck and the pixel decoder on or off;
    returns how many modules were switched.

    The ViT and the pixel decoder have switches ``sam3`` reads in training; each of the neck's
    convolution branches (``Sam3DualViTDetNeck.convs``, which upsample the ViT's output to 4x, 2x,
    1x and 0.5x) gets a checkpointed forward, so it keeps its input (shared by the branches)
    instead of its upsampled intermediates (0.3 GiB at 1008 px). The fusion encoder and decoder
    always checkpoint, as ``sam3`` requires.
    """
    switched = 0
    for module in model.modules():
        if type(module).__name__ == "ViT" and hasattr(module, "use_act_checkpoint"):
            module.use_act_checkpoint = enabled
            switched += 1
        elif type(module).__name__ == "UniversalSegmentationHead" and hasattr(module, "act_ckpt"):
            module.act_ckpt = enabled
            switched += 1
        elif type(module).__name__ == "Sam3DualViTDetNeck":
            for branch in module.convs:
                _checkpoint_forward(branch, enabled)
                switched += 1
    return switched


def run_fingerprint(config: TrainConfig, model_size: str, model: nn.Module) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it."""
    from sam3_lora_kit.lora import architecture_fingerprint

    return {
        "model_size": model_size,
        "base_weights": Path(config.checkpoint).name if config.checkpoint else f"random init (seed {config.seed})",
        "preset": config.preset,
        "target_modules": list(config.target_modules) if config.target_modules is not None else None,
        "rank": config.rank,
        "alpha": config.alpha,
        "qkv": config.qkv,
        "frozen_dtype": resolve_memory_savers(config, model_size)[1],
        "architecture": architecture_fingerprint(model),
    }


def total_steps_for(config: TrainConfig, sampler: EpochSampler) -> int:
    """``config.steps``, or the optimizer steps that cover ``config.epochs``."""
    if config.steps is not None:
        return config.steps
    return math.ceil(sampler.micro_batches_for(config.epochs) / config.grad_accum)


def _device_for(config: TrainConfig, info: DistInfo) -> torch.device:
    device = pick_device(config.device)
    if device.type == "cuda" and device.index is None:  # set_device needs an index
        device = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def train(
    config: TrainConfig | Mapping[str, Any] | str | os.PathLike,
    model: nn.Module | None = None,
    dataset: Any = None,
    progress: bool = True,
    eval_fn: Callable[[nn.Module, int], Mapping[str, Any]] | None = None,
) -> TrainResult:
    """Fine-tune SAM 3 with LoRA as ``config`` says; returns the run's adapter, metrics and summary.

    ``model``: a ``Sam3Image`` to train instead of building one (LoRA is applied unless it
    already has LoRA layers). ``dataset``: a ``CocoSegmentationDataset`` (or anything with
    ``len``, items like it and ``category_names``) instead of ``dataset_dir``/``split``.
    ``eval_fn(model, step)`` runs every ``eval_every`` steps and its numbers join the log.

    With ``text_cache`` (the default) a frozen text encoder leaves the step: its features for the
    dataset's category names are computed once (``cache_text_features``). A ``model`` you pass
    gets its encoder back when training ends (on a GPU it waits in host memory meanwhile); the
    trainer's own model keeps the cache (``result.model`` answers those names only) and the
    encoder's memory is freed.
    """
    config = as_config(config)
    if dataset is None and config.dataset_dir is None:
        raise ConfigError("dataset_dir is not set: give a clean COCO folder (--dataset-dir, or dataset_dir: in the config; "
                          "sam3-lora convert SRC DST makes one)")
    requested = pick_device(config.device)
    info = init_distributed(requested.type)
    try:
        device = _device_for(config, info)
        if info.is_main:
            ckpt.check_output_dir(config.output_dir)  # fail before the model is built
        return _train(config, model, dataset, progress, eval_fn, device, info)
    finally:
        shutdown_distributed(info)


def _train(config: TrainConfig, model: nn.Module | None, dataset: Any, progress: bool,
           eval_fn: Callable[[nn.Module, int], Mapping[str, Any]] | None, device: torch.device, info: DistInfo) -> TrainResult:
    from sam3_lora_kit.lora import count_parameters, iter_lora_layers
    from sam3_lora_kit.sam3.batches import BatchBuilder
    from sam3_lora_kit.sam3.loss import build_loss, training_step_loss
    from sam3_lora_kit.sam3.text_cache import cache_text_features, restore_text_encoder

    set_seed(config.seed)
    if dataset is None:
        from sam3_lora_kit.data import CocoSegmentationDataset

        dataset = CocoSegmentationDataset(config.dataset_dir, config.split)
    model_size = resolve_model_size(config, device)
    if model_size == "full" and model is None and device.type == "cpu" and progress and info.is_main:
        print(f"note: training the full-size SAM 3 on the CPU: one step at {config.image_size or 1008} px takes minutes "
              "(README: Benchmarks); a GPU takes about a second")
    report = None
    model_given = model is not None
    if model is None:
        from sam3_lora_kit.sam3 import build_sam3

        model = build_sam3(model_size, checkpoint=config.checkpoint, device=device, image_size=config.image_size)
    if not any(True for _ in iter_lora_layers(model)):
        from sam3_lora_kit.sam3 import apply_lora

        report = apply_lora(model, preset=config.preset, rank=config.rank, alpha=config.alpha, dropout=config.dropout,
                            target_modules=config.target_modules, qkv=config.qkv)
        if progress and info.is_main:
            print(report.table())
    checkpointing, frozen_dtype = resolve_memory_savers(config, model_size)
    set_activation_checkpointing(model, checkpointing)
    if frozen_dtype != "float32":
        from sam3_lora_kit.lora import store_frozen_weights, stored_parameter_names

        if not stored_parameter_names(model):
            storage = store_frozen_weights(model, getattr(torch, frozen_dtype))
            if progress and info.is_main:
                print(storage.summary())
    image_size = config.image_size or int(getattr(model, "image_size"))

    sampler = EpochSampler(len(dataset), config.batch_size, seed=config.seed, rank=info.rank, world_size=info.world_size)
    total_steps = total_steps_for(config, sampler)
    category_names = list(dataset.category_names)

    def batch_fn(index: int) -> Any:  # this rank's part of global micro-batch `index`, on the CPU
        builder = BatchBuilder(category_names, image_size, negative_ratio=config.negative_ratio,
                               flip_prob=config.flip_prob, seed=(config.seed * 1_000_003 + index) * 64 + info.rank)
        return builder([dataset[i] for i in sampler.indices(index)])

    loss_module = build_loss(device)

    def loss_fn(net: nn.Module, batch: Any) -> Mapping[str, torch.Tensor]:
        if device.type != "cpu":
            from sam3.model.utils.misc import copy_data_to_device

            batch = copy_data_to_device(batch, device, non_blocking=True)
        return training_step_loss(net, batch, loss_module)

    model.to(device)
    fingerprint = run_fingerprint(config, model_size, model)  # of the whole model, before the text encoder is taken out
    total = count_parameters(model)[1]
    text_encoder = None
    if config.text_cache:
        text_encoder = cache_text_features(model, category_names, device, resolve_precision(config.precision, device))
    text_features = "encoded at every step"
    if text_encoder is not None:
        text_features = f"cached once for {len(category_names)} category names"
        if not model_given:
            text_encoder = None  # the trainer's own model: the encoder's memory is freed
        elif device.type != "cpu":
            text_encoder.to("cpu")  # the caller's model: the encoder waits in host memory and comes back after
    if progress and info.is_main:
        print(f"training SAM 3 {model_size.upper()} on {device} for {total_steps} steps "
              f"(image_size={image_size}, batch_size={config.batch_size} x {config.grad_accum} accum x {info.world_size} process(es))")
    try:
        result = fit(
            model, batch_fn, loss_fn, config,
            total_steps=total_steps,
            fingerprint=fingerprint,
            device=device,
            dist_info=info,
            progress=progress,
            epoch_of=sampler.epoch,
            eval_fn=eval_fn,
            num_workers=config.num_workers,
            summary_fields={"model_size": model_size, "dataset_dir": str(config.dataset_dir), "split": config.split,
                            "num_images": len(dataset), "image_size": image_size,
                            "activation_checkpointing": checkpointing, "frozen_dtype": frozen_dtype,
                            "text_features": text_features, "total_params": total},
            adapter_metadata={"preset": config.preset, "model_size": model_size, "rank": config.rank, "alpha": config.alpha,
                              "qkv": config.qkv, "target_modules": config.target_modules, "image_size": image_size,
                              "category_names": category_names},
        )
    finally:
        if text_encoder is not None:
            restore_text_encoder(model, text_encoder.to(device))
    result.report = report
    result.extra.update(model_size=model_size, image_size=image_size, total_steps=total_steps)
    return result
