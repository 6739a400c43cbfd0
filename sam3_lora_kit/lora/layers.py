"""LoRA layers: ``LoRALinear`` for ``nn.Linear`` and ``LoRAMultiheadAttention`` for ``nn.MultiheadAttention``.

A LoRA layer keeps the frozen base layer and adds a low-rank update ``delta_W = scaling * B @ A``
with ``A`` of shape ``(rank, in_features)`` (Kaiming-uniform) and ``B`` of shape
``(out_features, rank)`` (zeros), so a fresh adapter changes nothing.

A fused projection (the ViT's ``qkv``, ``nn.MultiheadAttention``'s packed ``in_proj_weight``)
can carry one low-rank update per output slice (q, k, v): ``A`` then stacks the slices' factors
``(rank * n_enabled, in_features)``, ``B`` stacks theirs ``(sum of enabled out_i, rank)`` and the
update is the block-diagonal product, with zero rows for the slices left out.

Speed: custom autograd functions return gradients for the input, ``A`` and ``B`` only (never
for the frozen weight), so a frozen base layer with LoRA costs little more than the frozen base
layer. With many tokens per weight (float32, ``tokens * (in + out) >= max(in * out, 2^19)``, every ViT
layer at 1008 px) the update is folded into the weight, ``x @ (W + s * B @ A)^T``, because thin
GEMMs with a rank-sized dimension run far below a large GEMM's speed (on CPU): one GEMM against
``[W_eff; s * A]`` gives ``y`` and ``x @ A^T`` together forward (``y`` is then a column slice with
row stride ``out + R``, rounded up to a multiple of 8); backward, ``grad_x = grad_y @ W_eff`` comes
out contiguous (for ``out > 2 in``, and for ``out >= in >= 1024``: one GEMM against
``[W_eff | s * B]`` gives it, as a column slice, together with ``grad_y @ B``), and the two gradient reductions over tokens run as batched
products over token chunks when several CPU threads can share them. With few tokens (decoder queries, text) or
in half precision (where adding a small update to the weight would round it away) the low-rank
products are added into the base products in place instead. A merged layer runs its base module
unchanged. ``benchmarks/`` measures both paths against PEFT and the frozen layer.
The attention wrapper calls PyTorch's ``scaled_dot_product_attention`` and never builds the
L x L score matrix unless ``need_weights=True`` is asked for; on a CPU with attention dropout
(where PyTorch's fused kernel refuses dropout) it computes attention in blocks of query rows
(``attention.py``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from sam3_lora_kit.lora.attention import forces_no_weights, multihead_attention, project_qkv

__all__ = ["LoRALinear", "LoRAMultiheadAttention", "LoRALayer"]

# Fewest tokens per chunk when a thin gradient product is split over token chunks.
_MIN_CHUNK_TOKENS = 256
# Stacked GEMM outputs get a row length that is a multiple of this (zero padding): on CPU (MKL,
# AVX2, 2 threads) x @ W^T with 1024 + 4 output columns ran about 25 % slower than with 1024 + 8.
_ROW_ALIGN = 8
# Fewest ``tokens * (in + out)`` for the fused path. Below it the fused path's dozen extra small
# ops cost more than the thin GEMMs they save. Measured (CPU, 2 threads, rank 8, fwd + bwd, ratio to
# the frozen layer, in-place / fused): 256x256 at 800 tokens 1.48 / 1.59, at 1600 tokens 1.50 / 1.41;
# 2048x256 at 200 tokens 1.35 / 1.51, at 800 tokens 1.30 / 1.26; 256x2048 at 400 tokens 1.35 / 1.32.
_MIN_FUSED_ACTIVATIONS = 1 << 19


def _aligned(width: int) -> int:
    """``width`` rounded up to a multiple of ``_ROW_ALIGN``."""
    return width + (-width) % _ROW_ALIGN


def _reduction_chunks(tokens: int, dtype: torch.dtype, device: torch.device) -> int:
    """How many token chunks a thin ``a^T @ b`` is split into: two per CPU thread, or 1 (no split).

    With 2+ threads a batched product over token chunks keeps every thread busy where one GEMM
    with a rank-sized dimension does not; chunk sums are only taken in float32/float64, so half
    precision keeps the single fp32-accumulated product.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or dtype not in (torch.float32, torch.float64):
        return 1
    return max(1, min(2 * threads, tokens // _MIN_CHUNK_TOKENS))


def _thin_product(a: torch.Tensor, b: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``alpha * a^T @ b`` for ``a (N, p)``, ``b (N, q)`` with ``p`` rank-sized: a sum over ``N``."""
    tokens = a.shape[0]
    chunks = _reduction_chunks(tokens, a.dtype, a.device)
    if chunks < 2:
        if alpha == 1.0:
            return a.t() @ b  # (p, q)
        return torch.addmm(a.new_empty(a.shape[1], b.shape[1]), a.t(), b, beta=0, alpha=alpha)  # (p, q)
    whole = tokens - tokens % chunks
    a_chunks = a[:whole].view(chunks, -1, a.shape[1]).transpose(1, 2)  # (k, p, N/k)
    b_chunks = b[:whole].view(chunks, -1, b.shape[1])  # (k, N/k, q)
    product = torch.bmm(a_chunks, b_chunks).sum(0)  # (p, q)
    if whole < tokens:
        product.addmm_(a[whole:].t(), b[whole:])
    return product if alpha == 1.0 else product.mul_(alpha)


def _times_b(grad_y_2d: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> torch.Tensor:
    """``s * grad_y @ B`` ``(N, R)`` against a contiguous copy of ``B^T``: about twice as fast.

    Measured on CPU (MKL, 2 threads): ``(N, 2048) @ (2048, 8)`` took 0.42 ms with ``B`` stored
    ``(out, R)`` and 0.22 ms with ``B^T`` stored contiguous (N = 200; 14.3 against 8.1 ms at N = 5184).
    """
    b_rows = lora_B.t().contiguous()  # (R, out)
    return torch.addmm(grad_y_2d.new_empty(grad_y_2d.shape[0], b_rows.shape[0]), grad_y_2d, b_rows.t(), beta=0, alpha=scaling)


def _factor_grads(ctx, x_2d, x_a, grad_y_2d, grad_y_b, scaling: float = 1.0) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``A (R, in)`` and ``B (out, R)``; ``grad_y_b`` carries the scaling, ``x_a`` takes ``scaling``.

    At 256x256 (rank 8, 5184 tokens, CPU, 2 threads) these two reductions and ``_times_b`` add
    about 1.4 ms to an 8.6 ms frozen step: they run at 40-60 GFLOP/s against the big GEMMs' 160,
    while reading their 5.3 MB inputs takes 0.04 ms, so MKL's rank-sized kernels are bound by
    arithmetic, not memory. Running the backward over token blocks of 512 or 1296 rows, to keep
    each block in cache for all four products, was slower (kit / frozen 1.24 and 1.26 against
    1.17 and 1.20 unblocked, same runs).
    """
    grad_A = _thin_product(grad_y_b, x_2d) if ctx.needs_input_grad[3] else None  # (R, in)
    grad_B = _thin_product(x_a, grad_y_2d, scaling).t() if ctx.needs_input_grad[4] else None  # (out, R); faster than grad_y^T @ x_a
    return grad_A, grad_B


def _untracked_columns(buffer: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The first ``shape[-1]`` columns of a contiguous ``(N, width)`` buffer as ``shape``, not tracked as a view.

    A custom Function may not return a view of a tensor it made (in-place ops on it would then
    fail), so the columns are handed out through ``set_`` on the same storage instead.
    """
    strides, step = [1], buffer.shape[1]
    for size in reversed(shape[:-1]):  # leading dims, row-major over rows of ``width``
        strides.insert(0, step)
        step *= size
    return buffer.new_empty(0).set_(buffer.untyped_storage(), buffer.storage_offset(), tuple(shape), tuple(strides))


class _LoRALinearFunction(torch.autograd.Function):
    """``y = x @ W^T + b + s * (x @ A^T) @ B^T`` for a frozen ``W``/``b``.

    The custom backward returns gradients for ``x``, ``A`` and ``B`` only and adds the low-rank
    terms into the base products in place (``addmm_``), so no output-sized temporaries are made
    and the frozen weight never gets a gradient product.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling: float):  # type: ignore[override]
        out_features = weight.shape[0]
        x_2d = x.reshape(-1, x.shape[-1])  # (N, in)
        # Written through ``out=`` so ``y`` is not a view made here (F.linear on 3-D input returns
        # one), which would forbid in-place ops on the output.
        y = x.new_empty(*x.shape[:-1], out_features)  # (..., out)
        y_2d = y.view(-1, out_features)  # (N, out)
        if bias is None:
            torch.mm(x_2d, weight.t(), out=y_2d)
        else:
            torch.addmm(bias, x_2d, weight.t(), out=y_2d)
        x_a = x_2d @ lora_A.t()  # (N, R)
        y_2d.addmm_(x_a, lora_B.t(), alpha=scaling)
        ctx.save_for_backward(x, weight, lora_A, lora_B, x_a)
        ctx.scaling = scaling
        return y

    @staticmethod
    @once_differentiable  # a second derivative through it raises rather than being wrong
    def backward(ctx, grad_y):  # type: ignore[override]
        x, weight, lora_A, lora_B, x_a = ctx.saved_tensors
        scaling = ctx.scaling
        grad_y_2d = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        grad_y_b = _times_b(grad_y_2d, lora_B, scaling)  # (N, R) scaled
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y_2d @ weight  # (N, in)
            grad_x.addmm_(grad_y_b, lora_A)
            grad_x = grad_x.view(x.shape)
        grad_A, grad_B = _factor_grads(ctx, x.reshape(-1, x.shape[-1]), x_a, grad_y_2d, grad_y_b, scaling)
        return grad_x, None, None, grad_A, grad_B, None


class _LoRALinearFusedFunction(torch.autograd.Function):
    """The same ``y`` as ``_LoRALinearFunction`` computed as ``x @ (W + s * B @ A)^T + b``.

    Forward: one GEMM against the stacked ``[W_eff; s * A]`` (out + R, in) yields ``y`` and
    ``s * x @ A^T`` at once; ``y`` is the first ``out`` columns of that product (row stride
    ``out + R`` rounded up to a multiple of 8 with zero rows; ``reshape`` and splitting views
    work, ``view`` merging the last dimension does not). Backward: one GEMM against the stacked
    ``[W_eff | s * B]`` (out, in + R, padded alike) yields ``grad_x`` (returned as a column
    slice) and ``s * grad_y @ B`` where ``_stacked_backward`` says so (``out > 2 in``, or
    ``out >= in >= 1024``); otherwise ``grad_x = grad_y @ W_eff`` comes out contiguous and
    ``s * grad_y @ B`` from a thin product.
    ``W_eff`` is rebuilt rather than saved, so no weight-sized tensor is kept for backward.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling: float):  # type: ignore[override]
        out_features, in_features = weight.shape
        rank = lora_A.shape[0]
        width = _aligned(out_features + rank)
        stacked = weight.new_empty(width, in_features)  # [W_eff; s * A; 0]
        torch.addmm(weight, lora_B, lora_A, alpha=scaling, out=stacked[:out_features])
        torch.mul(lora_A, scaling, out=stacked[out_features:out_features + rank])
        stacked[out_features + rank:].zero_()
        x_2d = x.reshape(-1, in_features)  # (N, in)
        if bias is None:
            both = x_2d @ stacked.t()  # (N, width)
        else:
            both = torch.addmm(torch.cat([bias, bias.new_zeros(width - out_features)]), x_2d, stacked.t())
        x_a = both[:, out_features:out_features + rank].clone()  # (N, R) scaled; a copy, so y's buffer is not kept
        ctx.save_for_backward(x, weight, lora_A, lora_B, x_a)
        ctx.scaling = scaling
        return _untracked_columns(both, (*x.shape[:-1], out_features))  # (..., out), row stride width

    @staticmethod
    @once_differentiable  # a second derivative through it raises rather than being wrong
    def backward(ctx, grad_y):  # type: ignore[override]
        x, weight, lora_A, lora_B, x_a = ctx.saved_tensors
        scaling = ctx.scaling
        out_features, in_features = weight.shape
        grad_y_2d = grad_y.reshape(-1, out_features)  # (N, out)
        grad_x = None
        if ctx.needs_input_grad[0] and not _stacked_backward(in_features, out_features):
            grad_x = (grad_y_2d @ torch.addmm(weight, lora_B, lora_A, alpha=scaling)).view(x.shape)  # (..., in)
            grad_y_b = _times_b(grad_y_2d, lora_B, scaling)  # (N, R) scaled
        elif ctx.needs_input_grad[0]:
            rank = lora_A.shape[0]
            stacked = weight.new_empty(out_features, _aligned(in_features + rank))  # [W_eff | s * B | 0]
            stacked[:, :in_features].copy_(weight).addmm_(lora_B, lora_A, alpha=scaling)
            torch.mul(lora_B, scaling, out=stacked[:, in_features:in_features + rank])
            stacked[:, in_features + rank:].zero_()
            grad_both = grad_y_2d @ stacked  # (N, width)
            grad_x = grad_both[:, :in_features].view(x.shape)
            grad_y_b = grad_both[:, in_features:in_features + rank]  # (N, R) scaled
        else:
            grad_y_b = _times_b(grad_y_2d, lora_B, scaling)  # (N, R) scaled
        grad_A, grad_B = _factor_grads(ctx, x.reshape(-1, in_features), x_a, grad_y_2d, grad_y_b)
        return grad_x, None, None, grad_A, grad_B, None


def _stacked_backward(in_features: int, out_features: int) -> bool:
    """Whether the fused backward takes ``grad_x`` and ``grad_y @ B`` from one GEMM against ``[W_eff | s * B]``.

    Its ``grad_x`` is then a column slice, which whoever takes it next copies (``N x in`` read and
    written); the other way reads ``grad_y`` (``N x out``) once more in a thin ``grad_y @ B``, which
    MKL runs far below the memory's speed once ``out`` is large. Measured (CPU, 2 threads, 5184
    tokens, fwd + bwd, paired, stacked / contiguous): 1024x1024 0.945 (rank 8), 0.976 (16), 0.969
    (32); 256x256 1.03 (8), 1.01 (16); 4736x1024 1.05 and 2048x256 1.16 (8); earlier, for
    ``out > 2 in``, 256x2048 0.98.
    """
    return out_features > 2 * in_features or (out_features >= in_features >= 1024)


def _use_fused(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Fold the update into the weight when the activations outweigh the weight (float32/64 on a CPU only).

    On a GPU the in-place path was the faster one wherever both were timed (NVIDIA H200, fp32,
    rank 8, fwd + bwd, ratio to the frozen layer, in-place / fused: 256x2048 at 5184 tokens
    2.76 / 4.50, at 200 tokens 3.97 / 4.66; ``benchmarks/results/lora_layers_cuda.json``).
    """
    if weight.dtype not in (torch.float32, torch.float64) or weight.device.type != "cpu":
        return False
    out_features, in_features = weight.shape
    tokens = x.numel() // max(x.shape[-1], 1)
    activations = tokens * (in_features + out_features)
    return activations >= max(in_features * out_features, _MIN_FUSED_ACTIVATIONS)


class LoRALayer(nn.Module):
    """What every LoRA layer shares: the factors, their scaling, and the block assembly."""

    def _init_lora(
        self,
        in_features: int,
        out_splits: Sequence[int],
        enabled_splits: Sequence[bool],
        rank: int,
        alpha: float,
        dropout: float,
        use_rslora: bool,
        device: torch.device,
    ) -> None:
        if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not float(rank).is_integer() or rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        rank = int(rank)  # 8.0 from a YAML file or a division is rank 8
        if len(out_splits) != len(enabled_splits) or not any(enabled_splits):
            raise ValueError(f"enabled_splits {tuple(enabled_splits)} must match out_splits {tuple(out_splits)} and enable one")
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.use_rslora = bool(use_rslora)
        self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank)
        self.out_splits = tuple(int(n) for n in out_splits)
        self.enabled_splits = tuple(bool(e) for e in enabled_splits)
        n_enabled = sum(self.enabled_splits)
        out_enabled = sum(n for n, e in zip(self.out_splits, self.enabled_splits) if e)
        # Factors stay in float32 whatever the base dtype: autocast casts them on the fly.
        self.lora_A = nn.Parameter(torch.empty(rank * n_enabled, in_features, device=device))  # (R, in)
        self.lora_B = nn.Parameter(torch.zeros(out_enabled, rank, device=device))  # (out_enabled, r)
        for block in self.lora_A.data.split(rank):
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))  # PEFT's and nn.Linear's default
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def lora_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A (R, in), B (out, R))`` with ``B`` block-diagonal over the enabled output slices."""
        if len(self.out_splits) == 1:
            return self.lora_A, self.lora_B
        b_rows = iter(self.lora_B.split([n for n, e in zip(self.out_splits, self.enabled_splits) if e]))
        blocks = [next(b_rows) if e else self.lora_B.new_zeros(n, 0) for n, e in zip(self.out_splits, self.enabled_splits)]
        return self.lora_A, torch.block_diag(*blocks)

    def delta_weight(self) -> torch.Tensor:
        """The update ``scaling * B @ A`` with the base weight's shape ``(out, in)``."""
        lora_A, lora_B = self.lora_factors()
        return (lora_B @ lora_A) * self.scaling


def _restore_stored(module: nn.Module) -> None:
    """Undo ``store_frozen_weights`` on ``module``'s own parameters (a no-op when none is stored)."""
    from sam3_lora_kit.lora.storage import restore_frozen_weights  # storage builds on this module

    restore_frozen_weights(module)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if device_type in ("cpu", "cuda", "mps", "xpu") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def lora_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layer: LoRALayer,
    weight_trainable: bool = False,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` plus ``layer``'s low-rank update, honouring autocast."""
    lora_A, lora_B = layer.lora_factors()
    if (layer.training and isinstance(layer.lora_dropout, nn.Dropout)) or weight_trainable:
        # Plain autograd: the update sees dropped-out inputs, or the base itself trains.
        base_out = F.linear(x, weight, bias)
        x_a = F.linear(layer.lora_dropout(x).to(lora_A.dtype), lora_A)  # (..., R)
        return base_out + (F.linear(x_a, lora_B) * layer.scaling).to(base_out.dtype)
    cast = _autocast_dtype(x.device.type)
    dtype = cast if cast is not None else weight.dtype
    if not (x.dtype == lora_A.dtype == lora_B.dtype == dtype):
        x, lora_A, lora_B = x.to(dtype), lora_A.to(dtype), lora_B.to(dtype)
    weight = weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    function = _LoRALinearFusedFunction if _use_fused(x, weight) else _LoRALinearFunction
    if cast is None:
        return function.apply(x, weight, bias, lora_A, lora_B, layer.scaling)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return function.apply(x, weight, bias, lora_A, lora_B, layer.scaling)


class LoRALinear(LoRALayer):
    """``nn.Linear`` with a frozen base and a trainable low-rank update.

    ``out_splits``/``enabled_splits`` adapt a fused projection slice by slice, for example
    ``out_splits=(E, E, E), enabled_splits=(True, False, True)`` adapts q and v of a ``qkv``.
    Reading ``.weight`` returns the effective weight ``W + delta_W``, so code that reads the
    raw weight (``F.multi_head_attention_forward`` on ``out_proj``) sees the adapter too.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        out_splits: Sequence[int] | None = None,
        enabled_splits: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        self.base_layer = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        out_splits = tuple(out_splits) if out_splits is not None else (base.out_features,)
        if sum(out_splits) != base.out_features:
            raise ValueError(f"out_splits {out_splits} must add up to out_features={base.out_features}")
        enabled_splits = tuple(enabled_splits) if enabled_splits is not None else (True,) * len(out_splits)
        self._init_lora(base.in_features, out_splits, enabled_splits, rank, alpha, dropout, use_rslora, base.weight.device)

    in_features = property(lambda self: self.base_layer.in_features)
    out_features = property(lambda self: self.base_layer.out_features)
    bias = property(lambda self: self.base_layer.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``(out, in)``: the base weight, plus the update unless merged."""
        base_weight = self.base_layer.weight
        if self.merged:
            return base_weight
        return base_weight + self.delta_weight().to(base_weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        base = self.base_layer
        if self.merged:  # exactly the base layer's computation
            return base(x)
        weight, bias = base.weight, base.bias
        trainable = weight.requires_grad or (bias is not None and bias.requires_grad)
        return lora_linear(x, weight, bias, self, weight_trainable=trainable)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight (forward then costs exactly the base layer).

        A base weight kept in half precision (``store_frozen_weights``) becomes a plain float32
        parameter first, so the update lands in the weight itself at full precision.
        """
        if not self.merged:
            _restore_stored(self.base_layer)
            self.base_layer.weight.add_(self.delta_weight().to(self.base_layer.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again, restoring the base weight to float tolerance."""
        if self.merged:
            self.base_layer.weight.sub_(self.delta_weight().to(self.base_layer.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        splits = "" if len(self.out_splits) == 1 else f", out_splits={self.out_splits}, enabled={self.enabled_splits}"
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:.4g}{splits}"


class LoRAMultiheadAttention(LoRALayer):
    """``nn.MultiheadAttention`` with low-rank updates on q, k, v (each selectable) and ``out_proj``.

    The packed ``in_proj_weight`` gets one update per selected slice; ``out_proj`` becomes a
    ``LoRALinear`` inside the wrapped module. The forward projects with the adapted weights and
    calls ``F.scaled_dot_product_attention`` (fused kernels, no L x L scores; blockwise on a CPU
    with dropout) unless ``need_weights=True`` is asked for. Attributes of the wrapped module (``num_heads``,
    ``batch_first``, ``embed_dim``, ...) read through, and ``in_proj_weight`` returns the
    effective packed weight, so PyTorch's encoder-layer fast path also sees the adapter.
    """

    def __init__(
        self,
        base: nn.MultiheadAttention,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        targets: Sequence[str] = ("q", "k", "v", "out"),
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.MultiheadAttention):
            raise TypeError(f"LoRAMultiheadAttention wraps nn.MultiheadAttention, got {type(base).__name__}")
        if not base._qkv_same_embed_dim:
            raise ValueError("LoRAMultiheadAttention needs the packed in_proj_weight (kdim == vdim == embed_dim)")
        unknown = set(targets) - {"q", "k", "v", "out"}
        if unknown or not targets:
            raise ValueError(f"targets must be a non-empty subset of q, k, v, out; got {tuple(targets)}")
        self.base_layer = base
        for param in base.parameters():
            param.requires_grad_(False)
        self.targets = tuple(t for t in ("q", "k", "v", "out") if t in targets)
        self.forces_no_weights = forces_no_weights(base)
        embed_dim = base.embed_dim
        enabled = tuple(t in targets for t in ("q", "k", "v"))
        self.adapts_in_proj = any(enabled)
        if self.adapts_in_proj:
            self._init_lora(embed_dim, (embed_dim,) * 3, enabled, rank, alpha, dropout, use_rslora, base.in_proj_weight.device)
        else:  # only out_proj: keep the shared bookkeeping without factors
            self.rank, self.alpha, self.use_rslora, self.merged = int(rank), float(alpha), bool(use_rslora), False
            self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank)
            self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if "out" in targets:
            base.out_proj = LoRALinear(base.out_proj, rank, alpha, dropout, use_rslora)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    @property
    def in_proj_weight(self) -> torch.Tensor:
        """The effective packed weight ``(3E, E)``."""
        base_weight = self.base_layer.in_proj_weight
        if self.merged or not self.adapts_in_proj:
            return base_weight
        return base_weight + self.delta_weight().to(base_weight.dtype)

    def delta_weight(self) -> torch.Tensor:
        if not self.adapts_in_proj:
            return torch.zeros_like(self.base_layer.in_proj_weight)
        return super().delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        """Merge the q/k/v updates into ``in_proj_weight`` and ``out_proj``'s into its weight (float32, as ``LoRALinear.merge``)."""
        if not self.merged and self.adapts_in_proj:
            _restore_stored(self.base_layer)
            self.base_layer.in_proj_weight.add_(self.delta_weight().to(self.base_layer.in_proj_weight.dtype))
        self.merged = True
        if isinstance(self.base_layer.out_proj, LoRALinear):
            self.base_layer.out_proj.merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged and self.adapts_in_proj:
            self.base_layer.in_proj_weight.sub_(self.delta_weight().to(self.base_layer.in_proj_weight.dtype))
        self.merged = False
        if isinstance(self.base_layer.out_proj, LoRALinear):
            self.base_layer.out_proj.unmerge()

    def _in_projection(self, query, key, value):
        """Project to q, k, v ``(N, L|S, E)`` with the adapted packed weight."""
        base = self.base_layer
        if not self.adapts_in_proj or self.merged:
            return project_qkv(query, key, value, base.in_proj_weight, base.in_proj_bias)
        weight, bias = base.in_proj_weight, base.in_proj_bias
        trainable = weight.requires_grad or (bias is not None and bias.requires_grad)
        if query is key and key is value:  # one packed LoRA product
            return lora_linear(query, weight, bias, self, weight_trainable=trainable).chunk(3, dim=-1)
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            return self._in_projection_with_dropout(query, key, value)
        return project_qkv(query, key, value, self.in_proj_weight, bias)

    def _in_projection_with_dropout(self, query, key, value):
        """q, k, v for distinct inputs with LoRA dropout on each input of the low-rank path."""
        base = self.base_layer
        projected = project_qkv(query, key, value, base.in_proj_weight, base.in_proj_bias)  # base only, (N, L|S, E) each
        lora_B_slices = self.lora_factors()[1].chunk(3)  # (E, R) each; zero for a slice left out
        out = []
        for base_out, x, lora_B in zip(projected, (query, key, value), lora_B_slices):
            x_a = F.linear(self.lora_dropout(x).to(self.lora_A.dtype), self.lora_A)  # (N, L|S, R)
            out.append(base_out + (F.linear(x_a, lora_B) * self.scaling).to(base_out.dtype))
        return tuple(out)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        base = self.base_layer
        if self.merged:  # exactly the base module's computation (out_proj reads its merged weight)
            return base(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
                        average_attn_weights=average_attn_weights, is_causal=is_causal)
        need_weights = need_weights and not self.forces_no_weights
        if need_weights or base.bias_k is not None or base.add_zero_attn or query.is_nested:
            return self._forward_reference(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal)
        out = multihead_attention(base, query, key, value, key_padding_mask, attn_mask, is_causal, self._in_projection)
        return out, None

    def _forward_reference(self, query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal):
        """Rare options (weights returned, ``bias_k``, ``add_zero_attn``): PyTorch's own routine, adapted weights."""
        base = self.base_layer
        is_batched = query.dim() == 3
        if base.batch_first and is_batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, base.embed_dim, base.num_heads,
            self.in_proj_weight, base.in_proj_bias, base.bias_k, base.bias_v, base.add_zero_attn,
            base.dropout, base.out_proj.weight, base.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
        )
        if base.batch_first and is_batched:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, targets={self.targets}"
