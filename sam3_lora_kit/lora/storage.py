"""Frozen base weights kept in half precision: ``store_frozen_weights(model, torch.bfloat16)``.

LoRA never updates the base weights, so they need no float32 master copy. Each frozen
floating-point parameter with at least ``min_numel`` elements is stored in ``dtype`` (half the
bytes) and read back through a ``torch.nn.utils.parametrize`` parametrization: ``module.weight``
returns the stored tensor upcast to float32 for float32 compute, or the stored tensor itself
under autocast (which would cast a float32 weight to the same half dtype for its matmuls, so
there the results do not change at all). Small tensors (norms, biases, scales) stay float32.

The upcast copy is made where the weight is read and freed after use. Where autograd would save
it for backward (a frozen layer whose input needs a gradient), ``saving_stored_weights(model)``
(entered by the training step around the forward) makes autograd keep the stored tensor
instead and upcast it again when backward needs it, so the saving holds with or without
activation checkpointing.
State-dict keys of stored parameters gain ``parametrizations.<name>.original``;
``restore_frozen_weights`` undoes the storage (float32 again, plain keys).
"""
from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["StorageReport", "saving_stored_weights", "store_frozen_weights", "restore_frozen_weights", "stored_parameter_names"]

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
        # Set by ``saving_stored_weights`` while it is active: upcast storage address -> (upcast, stored).
        self.upcasts: dict[int, tuple[weakref.ref, torch.Tensor]] | None = None

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(stored.device.type):
            return stored  # autocast casts matmul inputs to its own dtype anyway
        upcast = stored.to(self.compute_dtype)
        if self.upcasts is not None:
            self.upcasts[upcast.untyped_storage().data_ptr()] = (weakref.ref(upcast), stored)
        return upcast

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


@dataclasses.dataclass(frozen=True, eq=False)
class _StoredView:
    """What autograd keeps in place of (a view of) an upcast weight: the stored tensor and the view."""

    stored: torch.Tensor
    dtype: torch.dtype
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int

    def upcast(self) -> torch.Tensor:
        return self.stored.to(self.dtype).as_strided(self.size, self.stride, self.offset)


def _enclosing_saved_tensors_hooks() -> tuple[Callable[[torch.Tensor], Any], Callable[[Any], torch.Tensor]] | None:
    """The ``saved_tensors_hooks`` pair already active (a caller's), so ours can hand other tensors on to it."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


@contextlib.contextmanager
def saving_stored_weights(model: nn.Module) -> Iterator[None]:
    """While active, autograd saves a stored weight in place of its float32 upcast (and views of it).

    Without it, a frozen layer whose input needs a gradient keeps the upcast copy (twice the
    stored bytes) until backward; with it, backward upcasts the stored tensor again (one layer at
    a time). Results are bit-identical. A ``saved_tensors_hooks`` pair that is already active
    (activation offloading, a profiler's) still receives every other tensor; activation
    checkpointing's own hooks take over inside checkpointed regions, where nothing is saved.
    A model with no stored weights is left alone.
    """
    chains = [p for module in model.modules() for name in _stored_names(module)
              for p in module.parametrizations[name] if isinstance(p, _StoredInHalf)]
    if not chains:
        yield
        return
    upcasts: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
    enclosing = _enclosing_saved_tensors_hooks()

    def pack(tensor: torch.Tensor) -> Any:
        try:
            address = tensor.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # no plain storage (sparse, nested, subclasses)
            address = None
        entry = upcasts.get(address) if address is not None else None
        if entry is not None and entry[0]() is not None:  # that upcast is alive, so this is its memory
            return _StoredView(entry[1], tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset())
        return enclosing[0](tensor) if enclosing else tensor

    def unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, _StoredView):
            return packed.upcast()
        return enclosing[1](packed) if enclosing else packed

    for chain in chains:
        chain.upcasts = upcasts
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        for chain in chains:
            chain.upcasts = None
        upcasts.clear()


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
