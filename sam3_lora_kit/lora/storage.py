"""Frozen base weights kept in half precision: ``store_frozen_weights(model, torch.bfloat16)``.

LoRA never updates the base weights, so they need no float32 master copy. Each frozen
floating-point parameter with at least ``min_numel`` elements is stored in ``dtype`` (half the
bytes) and read back through a ``torch.nn.utils.parametrize`` parametrization: ``module.weight``
returns the stored tensor upcast to float32 for float32 compute, or the stored tensor itself
under autocast (which would cast a float32 weight to the same half dtype for its matmuls, so
there the results do not change at all). Small tensors (norms, biases, scales) stay float32.

The upcast copy is made where the weight is read and freed after use, except where autograd
saves it for backward (a frozen layer whose input needs a gradient): with activation
checkpointing those layers are recomputed block by block, so nearly the whole saving remains.
State-dict keys of stored parameters gain ``parametrizations.<name>.original``;
``restore_frozen_weights`` undoes the storage (float32 again, plain keys).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["StorageReport", "store_frozen_weights", "restore_frozen_weights", "stored_parameter_names"]

HALF_DTYPES = (torch.bfloat16, torch.float16)
DEFAULT_MIN_NUMEL = 1 << 16  # 65,536 elements: projection matrices and embeddings, not norms or biases
# Only PyTorch's own layer types: parametrizing a module renames its class ("ParametrizedLinear"),
# and model code (sam3's included) finds its own modules by class name.
STORED_MODULE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.MultiheadAttention, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)


class _StoredInHalf(nn.Module):
    """Parametrization: keep the parameter in ``storage_dtype``, hand it out as ``compute_dtype``."""

    def __init__(self, storage_dtype: torch.dtype, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.storage_dtype = storage_dtype
        self.compute_dtype = compute_dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(stored.device.type):
            return stored  # autocast casts matmul inputs to its own dtype anyway
        return stored.to(self.compute_dtype)

    def extra_repr(self) -> str:
        return f"stored={self.storage_dtype}, compute={self.compute_dtype}"


@dataclasses.dataclass
class StorageReport:
    """What ``store_frozen_weights`` changed."""

    dtype: torch.dtype  # the storage dtype
    names: list[str]  # parameters now stored in ``dtype`` (model-relative names, before the storage)
    bytes_before: int  # those parameters' bytes before
    bytes_after: int  # and after

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def summary(self) -> str:
        return (f"{len(self.names)} frozen tensors stored in {str(self.dtype).replace('torch.', '')}: "
                f"{self.bytes_before / 2**20:,.1f} MiB -> {self.bytes_after / 2**20:,.1f} MiB "
                f"({self.bytes_saved / 2**20:,.1f} MiB saved)")


def _own_parametrizations(module: nn.Module) -> nn.ModuleDict | None:
    """The module's own parametrizations (LoRA wrappers read attributes through to their base layer)."""
    return module._modules.get("parametrizations")  # type: ignore[return-value]


def _stored_names(module: nn.Module) -> list[str]:
    own = _own_parametrizations(module)
    return [name for name, chain in own.items() if any(isinstance(p, _StoredInHalf) for p in chain)] if own else []


def store_frozen_weights(model: nn.Module, dtype: torch.dtype = torch.bfloat16,
                         min_numel: int = DEFAULT_MIN_NUMEL) -> StorageReport:
    """Store every frozen floating parameter with ``>= min_numel`` elements of ``model``'s PyTorch
    layers (``STORED_MODULE_TYPES``) in ``dtype``.

    Call it after the LoRA layers are injected (their factors are trainable and stay float32)
    and after the base weights are loaded. Parameters shared between modules are left alone.
    Returns a ``StorageReport``; ``restore_frozen_weights`` reverses it.
    """
    if dtype not in HALF_DTYPES:
        raise ValueError(f"frozen weights can be stored in torch.bfloat16 or torch.float16, not {dtype}")
    owners: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            storable = isinstance(module, STORED_MODULE_TYPES) and _own_parametrizations(module) is None
            owners.setdefault(id(param), []).append((module, param_name, full_name) if storable else None)
    report = StorageReport(dtype=dtype, names=[], bytes_before=0, bytes_after=0)
    for entries in owners.values():
        if len(entries) > 1 or entries[0] is None:
            continue  # shared between modules, or not in a PyTorch layer type
        module, param_name, full_name = entries[0]
        param = getattr(module, param_name)
        if (param.requires_grad or not param.is_floating_point()
                or param.dtype in HALF_DTYPES or param.numel() < min_numel):
            continue
        compute_dtype = param.dtype
        report.bytes_before += param.numel() * param.element_size()
        # parametrize keeps the dtype it is given: swap in the half-precision tensor first.
        module._parameters[param_name] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
        del param
        parametrize.register_parametrization(module, param_name, _StoredInHalf(dtype, compute_dtype), unsafe=True)
        original = module.parametrizations[param_name].original
        report.bytes_after += original.numel() * original.element_size()
        report.names.append(full_name)
    return report


def stored_parameter_names(model: nn.Module) -> list[str]:
    """Names (``module.param``) of the parameters that ``store_frozen_weights`` stores in half precision."""
    return [f"{name}.{param}" if name else param for name, module in model.named_modules() for param in _stored_names(module)]


def restore_frozen_weights(model: nn.Module) -> int:
    """Turn stored parameters back into plain parameters of their compute dtype; returns how many.

    The values are the stored (rounded) ones upcast: the rounding is not undone.
    """
    restored = 0
    for _, module in list(model.named_modules()):
        for param_name in _stored_names(module):
            chain = module.parametrizations[param_name]
            compute_dtype = next(p.compute_dtype for p in chain if isinstance(p, _StoredInHalf))
            value = chain.original.detach().to(compute_dtype)
            parametrize.remove_parametrizations(module, param_name, leave_parametrized=False)
            module._parameters[param_name] = nn.Parameter(value, requires_grad=False)
            restored += 1
    return restored
