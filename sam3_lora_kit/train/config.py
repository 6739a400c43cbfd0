"""``TrainConfig``: one training configuration for the command line, YAML files and notebook parameters.

Load it with ``TrainConfig.from_yaml(path)`` or ``TrainConfig.from_dict(params)``; every error
names the source (the YAML file, or ``parameters``) and the key, on one line.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sam3_lora_kit.train.atomic import atomic_write

__all__ = ["TrainConfig", "ConfigError"]

CHOICES: dict[str, tuple[str, ...]] = {
    "model_size": ("auto", "tiny", "full"),
    "qkv": ("fused", "split"),
    "frozen_dtype": ("auto", "float32", "bfloat16", "float16"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
}
# key: (low, high, low included?, high included?); None: unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "rank": (1, None, True, False),
    "alpha": (0, None, False, False),
    "dropout": (0, 1, True, False),
    "steps": (1, None, True, False),
    "epochs": (0, None, False, False),
    "lr": (0, None, False, False),
    "weight_decay": (0, None, True, False),
    "warmup_steps": (0, None, True, False),
    "batch_size": (1, None, True, False),
    "grad_accum": (1, None, True, False),
    "grad_clip": (0, None, True, False),
    "image_size": (14, None, True, False),
    "negative_ratio": (0, None, True, False),
    "flip_prob": (0, 1, True, True),
    "save_every": (1, None, True, False),
    "keep_checkpoints": (1, None, True, False),
    "eval_every": (1, None, True, False),
    "num_workers": (0, None, True, False),
    "log_every": (1, None, True, False),
    "seed": (0, None, True, False),
}


class ConfigError(ValueError):
    """A bad training configuration; ``str(error)`` is one line naming the source and the key."""


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are a small CPU-friendly run on the bundled sample."""

    # data
    dataset_dir: str | None = None  # clean COCO folder (sam3-lora convert's output): <dataset_dir>/<split>/_annotations.coco.json
    split: str = "train"  # the split to train on
    output_dir: str = "runs/sam3-lora"  # checkpoints, metrics, curves, adapter and summary go here
    # model
    model_size: str = "auto"  # "auto" (full when a checkpoint is given, else tiny) | "tiny" | "full"
    checkpoint: str | None = None  # base weights: a local official checkpoint, "hf", or None (random init)
    # LoRA
    preset: str | None = "all-attn"  # a name in sam3_lora_kit.sam3.LORA_PRESETS; null: target_modules only
    target_modules: list[str] | None = None  # extra module names/patterns added to the preset's
    rank: int = 8  # LoRA rank r
    alpha: float = 16.0  # LoRA scaling numerator: scaling = alpha / rank
    dropout: float = 0.0  # dropout on the LoRA input
    qkv: str = "fused"  # the ViT's fused qkv as one matrix ("fused") or as q, k, v slices ("split")
    frozen_dtype: str = "auto"  # storage of the frozen base weights: "bfloat16"/"float16" halve their memory; "auto": bfloat16 for the full model, float32 for tiny
    # schedule
    steps: int | None = 200  # optimizer steps; None when epochs is given
    epochs: float | None = None  # passes over the split; replaces steps when given
    lr: float = 2e-4  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW weight decay on the trainable parameters
    warmup_steps: int = 10  # linear warm-up steps before the cosine decay (a run this short only warms up)
    batch_size: int = 2  # images per micro-batch (per process with torchrun)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float | None = 1.0  # max gradient norm; None or 0 turns clipping off
    # batches
    image_size: int | None = None  # square input side in pixels; None: the model's default
    negative_ratio: float = 0.5  # hard-negative (absent category) queries per positive query
    flip_prob: float = 0.5  # probability of a horizontal flip per image
    # machine
    activation_checkpointing: bool | str = "auto"  # recompute activations in backward to save memory; "auto": on for the full model, off for tiny
    text_cache: bool = True  # encode the category names once and take the frozen text encoder out of the step (its weights: 0.66 GiB in bf16 for the full model); false: encode at every step
    precision: str = "auto"  # "auto" (bf16/fp16 on GPU, fp32 on CPU) | "bf16" | "fp16" | "fp32"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    num_workers: int = 0  # data-loading worker processes
    seed: int = 0  # seeds the base init, LoRA init, data order, flips and negatives
    # bookkeeping
    save_every: int = 50  # write a checkpoint every N optimizer steps (and at the end)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    eval_every: int | None = None  # call the evaluation hook every N steps; None: never
    log_every: int = 10  # refresh the progress bar's loss every N steps
    resume: str | None = None  # "latest" (newest checkpoint in output_dir; a fresh start if none), a checkpoint path, or None
    overwrite: bool = False  # a fresh run into an output_dir holding an earlier run's checkpoints replaces that run (true) or stops with an error (false)

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, params: Mapping[str, Any], source: str = "parameters") -> "TrainConfig":
        """A validated config from a mapping (notebook parameters, parsed YAML, CLI overrides)."""
        if not isinstance(params, Mapping):
            raise ConfigError(f"{source}: the configuration must be a mapping of keys to values, got {type(params).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in params if key not in names]
        if unknown:
            parts = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.6)
                parts.append(f"{key!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
            raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(parts)}")
        values = dict(params)
        if values.get("epochs") is not None and "steps" not in values:
            values["steps"] = None  # epochs given alone replaces the default steps
        config = cls(**values)
        config.validate(source)
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> "TrainConfig":
        """Load ``path`` (YAML), apply ``overrides``, validate.

        An override of None is a value like any other (``--set grad_clip=null`` turns clipping off);
        leave a key out to keep the file's value.
        """
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read the config file ({error})") from None
        try:
            params = yaml.safe_load(text)
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"{path}: not valid YAML{line} ({getattr(error, 'problem', None) or error})") from None
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {type(params).__name__}")
        params = {**params, **(overrides or {})}
        if overrides and overrides.get("steps") is not None:
            params.pop("epochs", None)
        if overrides and overrides.get("epochs") is not None:
            params.pop("steps", None)
        return cls.from_dict(params, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples), in field order."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML (atomically); ``from_yaml`` reads it back equal."""
        import yaml

        def write(handle) -> None:
            handle.write("# sam3-lora-kit training configuration (sam3-lora train --config this.yaml)\n")
            yaml.safe_dump(self.to_dict(), handle, sort_keys=False)

        path = atomic_write(path, write)
        return path

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with ``changes`` applied."""
        return type(self).from_dict({**self.to_dict(), **changes})

    # -- validation --------------------------------------------------------------------------

    def validate(self, source: str = "parameters") -> None:
        """Check types, choices and ranges; raise ``ConfigError`` naming ``source`` and the key."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerced = _check_type(value, hints[f.name])
            if coerced is _BAD:
                raise ConfigError(f"{source}: {f.name} must be {_type_name(hints[f.name])}, got {value!r} ({type(value).__name__})")
            setattr(self, f.name, coerced)
        for key, choices in CHOICES.items():
            if getattr(self, key) not in choices:
                close = difflib.get_close_matches(str(getattr(self, key)), choices, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: {key} must be one of {', '.join(map(repr, choices))}, got {getattr(self, key)!r}{hint}")
        for key, (low, high, low_in, high_in) in RANGES.items():
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{source}: {key} must be a finite number, got {value!r}")
            too_low = low is not None and (value < low if low_in else value <= low)
            too_high = high is not None and (value > high if high_in else value >= high)
            if too_low or too_high:
                if high is None:
                    bound = f">= {low}" if low_in else f"> {low}"
                else:
                    bound = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
                raise ConfigError(f"{source}: {key} must be {bound}, got {value!r}")
        if isinstance(self.activation_checkpointing, str) and self.activation_checkpointing != "auto":
            raise ConfigError(f"{source}: activation_checkpointing must be true, false or 'auto', got {self.activation_checkpointing!r}")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError(f"{source}: steps, epochs: give exactly one of them (steps={self.steps!r}, epochs={self.epochs!r})")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError(f"{source}: target_modules is empty: name at least one module, or use null")
        if self.preset is None and self.target_modules is None:
            raise ConfigError(f"{source}: preset, target_modules: both are null; name a preset or the modules to adapt")
        if self.preset is not None:
            from sam3_lora_kit.sam3.presets import LORA_PRESETS

            if self.preset not in LORA_PRESETS:
                close = difflib.get_close_matches(self.preset, list(LORA_PRESETS), n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{source}: preset must be one of {', '.join(map(repr, LORA_PRESETS))}, got {self.preset!r}{hint}")
        for key in ("dataset_dir", "output_dir", "split", "device"):
            if getattr(self, key) is not None and not getattr(self, key).strip():
                raise ConfigError(f"{source}: {key} must not be empty")


_BAD = object()


def _check_type(value: Any, hint: Any) -> Any:
    """``value`` (ints widened to float where a float is wanted) if it fits ``hint``, else ``_BAD``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            result = _check_type(value, option)
            if result is not _BAD:
                return result
        return _BAD
    if hint is type(None):
        return None if value is None else _BAD
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str) and item is str:
            return [value]  # one target given as a string
        if not isinstance(value, (list, tuple)):
            return _BAD
        items = [_check_type(v, item) for v in value]
        return _BAD if any(v is _BAD for v in items) else items
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _BAD
    if hint is str:
        return value if isinstance(value, str) else _BAD
    return value


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in typing.get_args(hint)]
        return " or ".join("null" if n == "NoneType" else n for n in names)
    if origin is list:
        return "a list of strings" if typing.get_args(hint)[0] is str else f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(hint.__name__, hint.__name__)
