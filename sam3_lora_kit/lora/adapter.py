"""Adapter files: the LoRA factors in one safetensors file, with metadata that says where they fit.

The metadata records the kit version, each LoRA layer's configuration (rank, alpha, slices,
attention targets) and a fingerprint of the base architecture (module names, parameter names,
shapes and dtypes). Loading checks all of it and names the first difference. No pickle.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from sam3_lora_kit.lora.inject import iter_lora_layers, lora_state_dict
from sam3_lora_kit.lora.layers import LoRAMultiheadAttention

__all__ = ["save_adapter", "load_adapter", "read_adapter_metadata", "architecture_fingerprint", "AdapterError"]

FORMAT = "sam3-lora-kit.adapter.v1"


class AdapterError(ValueError):
    """An adapter file that cannot be read or does not fit the model."""


def _kit_version() -> str:
    from sam3_lora_kit import __version__

    return __version__


_PARAMETRIZED = re.compile(r"\.parametrizations\.(\w+)\.original(?=$|\.)")


def architecture_fingerprint(model: nn.Module) -> str:
    """A short hash of the base model's tensor names, shapes and kinds (LoRA factors excluded).

    Floating-point tensors count as ``float`` whatever their precision, so an adapter trained
    with the base in bfloat16 (or stored so: ``store_frozen_weights``) loads into the float32 model.
    """
    entries = []
    for name, tensor in model.state_dict().items():
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
            continue
        # Names inside LoRA wrappers drop "base_layer."; stored weights drop their parametrization path.
        plain = _PARAMETRIZED.sub(r".\1", name.replace("base_layer.", ""))
        kind = "float" if tensor.is_floating_point() else str(tensor.dtype)
        entries.append(f"{plain}:{tuple(tensor.shape)}:{kind};")
    return hashlib.sha256("".join(sorted(entries)).encode()).hexdigest()[:16]


def _fingerprint_v0(model: nn.Module) -> str:
    """The fingerprint kit 0.1.0 wrote (names in state-dict order, dtypes included), so its adapters still load."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name.rsplit(".", 1)[-1] not in ("lora_A", "lora_B"):
            digest.update(f"{name.replace('base_layer.', '')}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:16]


def _layer_configs(model: nn.Module) -> dict[str, dict[str, Any]]:
    configs = {}
    for name, layer in iter_lora_layers(model):
        config: dict[str, Any] = {"kind": type(layer).__name__, "rank": layer.rank, "alpha": layer.alpha, "use_rslora": layer.use_rslora}
        if isinstance(layer, LoRAMultiheadAttention):
            config["targets"] = list(layer.targets)
        else:
            config["out_splits"], config["enabled_splits"] = list(layer.out_splits), list(layer.enabled_splits)
        configs[name] = config
    return configs


def save_adapter(model: nn.Module, path: str | os.PathLike, *, base_fingerprint: str | None = None,
                 **metadata: Any) -> Path:
    """Write the model's LoRA factors to ``path`` (safetensors), atomically; returns the path.

    Extra keyword ``metadata`` (JSON-serialisable) is stored too, for example the preset name.
    ``base_fingerprint``: ``architecture_fingerprint`` of the whole base model, taken earlier,
    for a model that has since lost a frozen part (the trainer's text cache); default: the model's.
    """
    path = Path(path)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in lora_state_dict(model).items()}
    if not tensors:
        raise AdapterError(f"{path}: the model has no LoRA layers to save (call inject_lora first)")
    _check_finite(tensors, path, "nothing written")
    layers = _layer_configs(model)
    ranks = sorted({c["rank"] for c in layers.values()})
    alphas = sorted({c["alpha"] for c in layers.values()})
    header = {
        "format": FORMAT,
        "kit_version": _kit_version(),
        "rank": json.dumps(ranks[0] if len(ranks) == 1 else ranks),
        "alpha": json.dumps(alphas[0] if len(alphas) == 1 else alphas),
        "targets": json.dumps(list(layers)),
        "layers": json.dumps(layers),
        "fingerprint": base_fingerprint or architecture_fingerprint(model),
        "user": json.dumps(metadata, default=str),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; an adapter is meant to be shared
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_adapter_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The adapter's metadata, JSON fields decoded. Raises ``AdapterError`` for a non-adapter file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"{path}: not a safetensors adapter file ({error})") from None
    if raw.get("format") != FORMAT:
        raise AdapterError(f"{path}: not a sam3-lora-kit adapter (metadata format is {raw.get('format')!r})")
    decoded: dict[str, Any] = dict(raw)
    for key in ("rank", "alpha", "targets", "layers", "user", "fingerprint"):
        if key not in raw:
            raise AdapterError(f"{path}: adapter metadata lacks {key!r} (a damaged or hand-made file)")
        if key == "fingerprint":
            continue
        try:
            decoded[key] = json.loads(raw[key])
        except json.JSONDecodeError as error:
            raise AdapterError(f"{path}: adapter metadata {key!r} is not valid JSON ({error})") from None
    if not isinstance(decoded["layers"], dict) or not all(isinstance(c, dict) for c in decoded["layers"].values()):
        raise AdapterError(f"{path}: adapter metadata 'layers' must map layer names to their settings")
    return decoded


def load_adapter(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> dict[str, Any]:
    """Load an adapter saved by ``save_adapter`` into a model injected with the same targets.

    Checks the layer configuration, tensor names and shapes (and, with ``strict``, the base
    architecture fingerprint) and raises ``AdapterError`` naming the first mismatch before
    anything is copied. Returns the adapter's metadata.
    """
    path = Path(path)
    meta = read_adapter_metadata(path)
    merged = next((name for name, layer in iter_lora_layers(model) if layer.merged), None)
    if merged is not None:
        raise AdapterError(f"{path}: the model's LoRA layer {merged!r} is merged into its base weights; "
                           f"call unmerge_lora(model) before loading another adapter")
    have = _layer_configs(model)
    for name, config in meta["layers"].items():
        if name not in have:
            raise AdapterError(f"{path}: adapter has a LoRA layer at {name!r} but the model has none there (inject the same targets first)")
        if have[name] != config:
            diff = next(k for k in config if have[name].get(k) != config[k])
            raise AdapterError(f"{path}: LoRA layer {name!r} differs in {diff}: adapter {config[diff]!r}, model {have[name].get(diff)!r}")
    extra = [name for name in have if name not in meta["layers"]]
    if extra and strict:
        raise AdapterError(f"{path}: the model has a LoRA layer at {extra[0]!r} that the adapter lacks")
    if strict and meta["fingerprint"] not in (architecture_fingerprint(model), _fingerprint_v0(model)):
        raise AdapterError(f"{path}: adapter was made for another base architecture (fingerprint {meta['fingerprint']} != {architecture_fingerprint(model)})")
    params = lora_state_dict(model)
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
        for name in names:
            if name not in params:
                raise AdapterError(f"{path}: tensor {name!r} has no place in the model")
            shape = tuple(handle.get_slice(name).get_shape())
            if shape != tuple(params[name].shape):
                raise AdapterError(f"{path}: tensor {name!r} has shape {shape}, the model expects {tuple(params[name].shape)}")
        missing = [name for name in params if name not in names and name.rsplit(".", 1)[0] in meta["layers"]]
        if missing:
            raise AdapterError(f"{path}: tensor {missing[0]!r} is missing from the adapter")
        tensors = {name: handle.get_tensor(name) for name in names}
    _check_finite(tensors, path, "the model is unchanged")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return meta


def _check_finite(tensors: dict[str, torch.Tensor], path: Path, outcome: str) -> None:
    """``AdapterError`` naming the first tensor with a NaN or an infinity (a diverged run)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise AdapterError(f"{path}: LoRA tensor {name!r} holds NaN or infinite values (a diverged run?); {outcome}")
