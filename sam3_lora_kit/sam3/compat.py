"""Every scoped patch of a ``sam3`` attribute the kit makes, in one place.

``sam3`` 0.1.4 assumes CUDA (and Triton) in a few spots. The kit never edits ``sam3`` and
never patches torch globally: each fix below is a context manager that swaps one ``sam3``
attribute and restores the original on exit, even on error.

| patch                       | sam3 attribute                                   | why |
|-----------------------------|--------------------------------------------------|-----|
| ``position_encoding_on``    | ``model_builder._create_position_encoding``      | ``PositionEmbeddingSine(precompute_resolution=...)`` allocates on ``"cuda"`` (position_encoding.py:47) |
| ``decoder_coords_on``       | ``decoder.TransformerDecoder._get_coords``       | the decoder precomputes its box-RPB coordinates on ``"cuda"`` (decoder.py:280) |
| ``unpinned_box_scale``      | ``geometry_encoders.torch``                      | box ROI pooling calls ``pin_memory()`` on every forward (geometry_encoders.py:659), which needs a GPU |
| ``torch_focal_loss``        | ``train.loss.loss_fns.sigmoid_focal_loss``       | its default is a Triton GPU kernel; its own pure-torch branch (``triton=False``) runs anywhere |

``CpuSafeGeometryEncoder`` enters ``unpinned_box_scale`` around its own forward; ``build_sam3``
installs it, and ``Sam3Loss`` enters ``torch_focal_loss`` around its forward off CUDA.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import torch

__all__ = [
    "PATCHES",
    "CpuSafeGeometryEncoder",
    "decoder_coords_on",
    "make_geometry_encoder_cpu_safe",
    "position_encoding_on",
    "torch_focal_loss",
    "unpinned_box_scale",
]

# (context manager name, patched attribute): the table above, for tests and readers.
PATCHES: tuple[tuple[str, str], ...] = (
    ("position_encoding_on", "sam3.model_builder._create_position_encoding"),
    ("decoder_coords_on", "sam3.model.decoder.TransformerDecoder._get_coords"),
    ("unpinned_box_scale", "sam3.model.geometry_encoders.torch"),
    ("torch_focal_loss", "sam3.train.loss.loss_fns.sigmoid_focal_loss"),
)


@contextlib.contextmanager
def _swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``owner.name = value`` for the block; restore the original afterwards."""
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def position_encoding_on(device: torch.device) -> Iterator[None]:
    """While building, skip the sine position encoding's precompute off CUDA (its cache fills lazily)."""
    from sam3 import model_builder

    if torch.device(device).type == "cuda":
        yield
        return
    original = model_builder._create_position_encoding

    def create(precompute_resolution: int | None = None):  # same signature as the original
        return original(precompute_resolution=None)

    with _swapped(model_builder, "_create_position_encoding", create):
        yield


@contextlib.contextmanager
def decoder_coords_on(device: torch.device) -> Iterator[None]:
    """While building, make the decoder precompute its box-RPB coordinates on ``device``."""
    from sam3.model.decoder import TransformerDecoder

    original = TransformerDecoder.__dict__["_get_coords"].__func__  # a staticmethod
    target = torch.device(device)

    def get_coords(H: int, W: int, device: Any = None):  # noqa: N803 (sam3's names)
        return original(H, W, target)

    with _swapped(TransformerDecoder, "_get_coords", staticmethod(get_coords)):
        yield


class _Unpinned:
    """What ``torch.tensor`` returns inside the patched module: ``pin_memory()`` gives the tensor back."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor

    def pin_memory(self) -> torch.Tensor:
        return self.tensor


class _TorchWithoutPinning:
    """Stands for ``torch`` inside ``sam3.model.geometry_encoders``; only ``torch.tensor`` differs."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def tensor(*args: Any, **kwargs: Any) -> _Unpinned:
        # geometry_encoders.py calls torch.tensor once: the box scale it pins, then moves
        return _Unpinned(torch.tensor(*args, **kwargs))


@contextlib.contextmanager
def unpinned_box_scale() -> Iterator[None]:
    """Let box ROI pooling run without pinned memory (it then copies synchronously)."""
    from sam3.model import geometry_encoders

    with _swapped(geometry_encoders, "torch", _TorchWithoutPinning()):
        yield


@contextlib.contextmanager
def torch_focal_loss() -> Iterator[None]:
    """Make ``sam3``'s losses use the pure-torch sigmoid focal loss instead of the Triton kernel."""
    from sam3.train.loss import loss_fns

    original = loss_fns.sigmoid_focal_loss
    with _swapped(loss_fns, "sigmoid_focal_loss", functools.partial(original, triton=False)):
        yield


def _cpu_safe_geometry_encoder_class() -> type:
    from sam3.model.geometry_encoders import SequenceGeometryEncoder

    class CpuSafeGeometryEncoder(SequenceGeometryEncoder):
        """``SequenceGeometryEncoder`` whose forward runs inside ``unpinned_box_scale``; same weights."""

        def forward(self, *args: Any, **kwargs: Any):
            if self.boxes_pool_project is None or torch.cuda.is_available():
                return super().forward(*args, **kwargs)
            with unpinned_box_scale():
                return super().forward(*args, **kwargs)

    CpuSafeGeometryEncoder.__module__ = __name__  # picklable: found again through this module's __getattr__
    CpuSafeGeometryEncoder.__qualname__ = "CpuSafeGeometryEncoder"
    return CpuSafeGeometryEncoder


@functools.lru_cache(maxsize=1)
def _geometry_class() -> type:
    return _cpu_safe_geometry_encoder_class()


def __getattr__(name: str) -> Any:  # ``CpuSafeGeometryEncoder`` without importing sam3 at import time
    if name == "CpuSafeGeometryEncoder":
        return _geometry_class()
    raise AttributeError(name)


def make_geometry_encoder_cpu_safe(encoder: torch.nn.Module) -> torch.nn.Module:
    """Turn a built ``SequenceGeometryEncoder`` into ``CpuSafeGeometryEncoder`` in place (same state dict)."""
    encoder.__class__ = _geometry_class()
    return encoder
