"""The ``train`` subcommand of ``sam3-lora``: a YAML config plus command-line overrides.

Several GPUs: ``torchrun --nproc_per_node 4 -m sam3_lora_kit.cli train --config run.yaml``.
"""
from __future__ import annotations

import argparse
from typing import Any

# (flag, config key, type, help)
_OVERRIDES: tuple[tuple[str, str, Any, str], ...] = (
    ("--dataset-dir", "dataset_dir", str, "clean COCO folder"),
    ("--split", "split", str, "split to train on"),
    ("--output-dir", "output_dir", str, "where checkpoints, metrics, curves and the adapter go"),
    ("--model-size", "model_size", str, "auto | tiny | full"),
    ("--checkpoint", "checkpoint", str, "base weights: official checkpoint path or 'hf'"),
    ("--preset", "preset", str, "LoRA preset name"),
    ("--rank", "rank", int, "LoRA rank"),
    ("--alpha", "alpha", float, "LoRA alpha"),
    ("--steps", "steps", int, "optimizer steps (replaces epochs)"),
    ("--epochs", "epochs", float, "passes over the split (replaces steps)"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--batch-size", "batch_size", int, "images per micro-batch (per process)"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimizer step"),
    ("--image-size", "image_size", int, "input side in pixels"),
    ("--precision", "precision", str, "auto | bf16 | fp16 | fp32"),
    ("--device", "device", str, "auto | cpu | cuda | cuda:N | mps"),
    ("--seed", "seed", int, "random seed"),
    ("--save-every", "save_every", int, "checkpoint every N steps"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``sam3-lora`` command line."""
    parser = subparsers.add_parser("train", help="fine-tune SAM 3 with LoRA (config YAML + overrides)")
    parser.add_argument("--config", metavar="YAML", help="training config (TrainConfig fields); defaults when omitted")
    for flag, key, kind, text in _OVERRIDES:
        parser.add_argument(flag, dest=key, type=kind, default=None, help=text)
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the newest checkpoint in --output-dir, or from CHECKPOINT")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --output-dir (its checkpoints, adapter and summary) instead of stopping")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config key (value read as YAML), e.g. --set flip_prob=0")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_train)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the command line sets (flags left out are not included)."""
    import yaml

    overrides: dict[str, Any] = {key: getattr(args, key) for _, key, _, _ in _OVERRIDES if getattr(args, key) is not None}
    if args.resume is not None:
        overrides["resume"] = args.resume
    if getattr(args, "overwrite", False):
        overrides["overwrite"] = True
    for item in args.extra:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``sam3-lora train``; returns the exit status."""
    from sam3_lora_kit.train.config import TrainConfig
    from sam3_lora_kit.train.trainer import train

    overrides = overrides_from_args(args)
    if args.config:
        config = TrainConfig.from_yaml(args.config, overrides)
    else:
        if "epochs" in overrides:
            overrides.setdefault("steps", None)
        config = TrainConfig.from_dict(overrides, source="command line")
    result = train(config, progress=not args.no_progress)
    if result.adapter_path is not None:
        s = result.summary
        print(f"adapter: {result.adapter_path} ({s.get('adapter_mb', 0):.2f} MiB); loss {s.get('loss_first', float('nan')):.4g} -> "
              f"{s.get('loss_last', float('nan')):.4g}; {s.get('seconds_per_step', 0):.3f} s/step; outputs in {result.output_dir}")
    return 0
