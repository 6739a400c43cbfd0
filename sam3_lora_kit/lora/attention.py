"""Attention with dropout that never holds the whole ``(N, H, L, S)`` score matrix on a CPU.

PyTorch's fused CPU attention kernel takes no dropout, so ``F.scaled_dot_product_attention``
with ``dropout_p > 0`` on a CPU runs the math path: scores, probabilities, the dropout mask and
the dropped probabilities, each ``(N, H, L, S)``, are alive together and the last is saved for
backward. SAM 3 trains with attention dropout 0.1; in its fusion encoder at 1008 px
(``N = 3`` prompts, ``H = 8``, ``L = S = 72 * 72``) each of those tensors is 2.6 GB.

``blockwise_attention`` computes the same function in blocks of query rows (as FlashAttention does):
forward saves ``q``, ``k``, ``v``, the mask, the output and each row's log-sum-exp; backward
recomputes a block's probabilities from them and draws its dropout mask again from the
generator state the forward started from. Peak extra memory is a few blocks of about
``BLOCK_BYTES``. ``attention`` picks it where it matters; elsewhere (a GPU, no dropout, small
scores) it is ``F.scaled_dot_product_attention`` itself.

``nn.MultiheadAttention`` cannot be told to use it: its forward calls PyTorch's own routine.
``multihead_attention`` is that forward (without returned weights) written over ``attention``;
``LoRAMultiheadAttention`` runs it, and ``use_efficient_attention`` turns the plain modules of
a model into ``EfficientMultiheadAttention`` (the same parameters and state dict), so attention
that only passes gradients on (a frozen detector under a ViT adapter, full fine-tuning) gets it too.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = [
    "BLOCK_BYTES",
    "EfficientMultiheadAttention",
    "additive_mask",
    "attention",
    "blockwise_attention",
    "forces_no_weights",
    "multihead_attention",
    "project_qkv",
    "use_efficient_attention",
]

# Subclasses of nn.MultiheadAttention whose forward only forces need_weights=False.
_FORCES_NO_WEIGHTS = frozenset({"sam3.model.model_misc.MultiheadAttentionWrapper"})
# Bytes of one block of float32 scores ``(N, H, rows, S)``; blocking starts at twice this.
BLOCK_BYTES = 32 * 2**20
# Fewest scores per head ``L * S`` at which CPU attention gets heads-first contiguous q, k, v.
# PyTorch's CPU flash kernel (fwd + bwd, 8 heads of 32, 2 threads) ran 4-6 % faster on them than on
# token-major views of a projection's output, the copies included: 0.964x at 2048 tokens, 0.94-0.955x
# at 5184; at 1024 tokens 0.995x, at 200 tokens 1.017x (slower).
CONTIGUOUS_MIN_SCORES = 2048 * 2048


def _block_rows(batch_heads: int, tgt_len: int, src_len: int, block_bytes: int) -> int:
    """Query rows per block so that a float32 block ``(N*H, rows, S)`` holds about ``block_bytes``."""
    return max(1, min(tgt_len, block_bytes // (4 * batch_heads * src_len)))


def _mask_rows(mask: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """The mask's rows for query rows ``start:stop`` (a mask broadcast over rows stays whole)."""
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[..., start:stop, :]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half precisions compute in float32; float32 and float64 in themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _block_probs(q_rows, k, mask_rows, scale, lse=None):
    """Softmax probabilities ``(N, H, rows, S)`` in ``k``'s dtype and, when ``lse`` is None, the row log-sum-exp.

    ``k`` comes already in the compute dtype. Fully masked rows (every score ``-inf``) get
    probabilities 0, as PyTorch's math path gives.
    """
    scores = torch.matmul(q_rows.to(k.dtype), k.transpose(-2, -1)).mul_(scale)  # (N, H, rows, S)
    if mask_rows is not None:
        scores.add_(mask_rows.to(k.dtype))
    if lse is None:
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (N, H, rows, 1)
        lse = lse.masked_fill(torch.isneginf(lse), 0.0)  # exp(-inf - 0) = 0 for an all-masked row
    return scores.sub_(lse).exp_(), lse


def _keep_scaled(probs: torch.Tensor, dropout_p: float, generator: torch.Generator) -> torch.Tensor:
    """The dropout mask for one block: 0 where dropped, ``1 / (1 - p)`` where kept (``probs``' dtype)."""
    keep = torch.empty_like(probs).uniform_(generator=generator)  # about 3x faster than bernoulli_ here
    return keep.ge_(dropout_p).mul_(1.0 / (1.0 - dropout_p))


class _BlockwiseAttention(torch.autograd.Function):
    """softmax(q k^T * scale + mask) with dropout, times v; blocks of ``rows`` query rows."""

    @staticmethod
    def forward(ctx, q, k, v, mask, dropout_p: float, seed: int, rows: int):  # type: ignore[override]
        # q (N, H, L, D), k (N, H, S, D), v (N, H, S, Dv), mask broadcastable to (N, H, L, S)
        scale = 1.0 / math.sqrt(q.shape[-1])
        generator = torch.Generator(device=q.device).manual_seed(seed) if dropout_p > 0 else None
        dtype = _compute_dtype(q.dtype)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])  # (N, H, L, Dv)
        lse = torch.empty(*q.shape[:-1], 1, dtype=dtype, device=q.device)  # (N, H, L, 1)
        k_c, v_c = k.to(dtype), v.to(dtype)
        for start in range(0, q.shape[-2], rows):
            stop = min(start + rows, q.shape[-2])
            probs, lse[..., start:stop, :] = _block_probs(q[..., start:stop, :], k_c, _mask_rows(mask, start, stop), scale)
            if generator is not None:
                probs.mul_(_keep_scaled(probs, dropout_p, generator))
            out[..., start:stop, :] = torch.matmul(probs, v_c)
        ctx.save_for_backward(q, k, v, mask, out, lse)
        ctx.dropout_p, ctx.seed, ctx.rows, ctx.scale = dropout_p, seed, rows, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, mask, out, lse = ctx.saved_tensors
        dropout_p, rows, scale = ctx.dropout_p, ctx.rows, ctx.scale
        generator = torch.Generator(device=q.device).manual_seed(ctx.seed) if dropout_p > 0 else None
        dtype = _compute_dtype(q.dtype)
        k_c, v_c = k.to(dtype), v.to(dtype)
        grad_q = torch.empty(q.shape, dtype=dtype, device=q.device)
        grad_k = torch.zeros(k.shape, dtype=dtype, device=k.device)
        grad_v = torch.zeros(v.shape, dtype=dtype, device=v.device)
        mask_grad = mask is not None and ctx.needs_input_grad[3]
        grad_scores = torch.empty(torch.broadcast_shapes(mask.shape, (*q.shape[:-1], k.shape[-2])),
                                  dtype=dtype, device=q.device) if mask_grad else None
        for start in range(0, q.shape[-2], rows):  # the same blocks in the same order: the same dropout draws
            stop = min(start + rows, q.shape[-2])
            q_rows = q[..., start:stop, :]
            probs, _ = _block_probs(q_rows, k_c, _mask_rows(mask, start, stop), scale, lse[..., start:stop, :])
            grad_rows = grad_out[..., start:stop, :].to(dtype)  # (N, H, rows, Dv)
            grad_dropped = torch.matmul(grad_rows, v_c.transpose(-2, -1))  # (N, H, rows, S)
            if generator is not None:
                keep = _keep_scaled(probs, dropout_p, generator)
                grad_v += torch.matmul((probs * keep).transpose(-2, -1), grad_rows)
                grad_dropped.mul_(keep)  # now d loss / d probs
                del keep
            else:
                grad_v += torch.matmul(probs.transpose(-2, -1), grad_rows)
            # softmax backward: dS = P * (dP - rowsum(dP * P)), and rowsum(dP * P) = rowsum(dO * O)
            row_dot = (grad_rows * out[..., start:stop, :].to(dtype)).sum(dim=-1, keepdim=True)  # (N, H, rows, 1)
            grad_s = grad_dropped.sub_(row_dot).mul_(probs)  # (N, H, rows, S)
            del probs
            if grad_scores is not None:
                grad_scores[..., start:stop, :] = grad_s
            grad_q[..., start:stop, :] = torch.matmul(grad_s, k_c).mul_(scale)
            grad_k += torch.matmul(grad_s.transpose(-2, -1), q_rows.to(dtype)).mul_(scale)
        grad_mask = None
        if grad_scores is not None:  # sum over the dimensions the mask was broadcast along
            dims = [i for i, (m, g) in enumerate(zip(mask.shape, grad_scores.shape)) if m == 1 and g != 1]
            grad_mask = (grad_scores.sum(dim=dims, keepdim=True) if dims else grad_scores).to(mask.dtype)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), grad_mask, None, None, None


def blockwise_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> torch.Tensor:
    """Attention ``(N, H, L, Dv)`` computed in blocks of query rows; dropout drawn from ``seed``.

    ``q`` ``(N, H, L, D)``, ``k`` ``(N, H, S, D)``, ``v`` ``(N, H, S, Dv)``; ``attn_mask`` an
    additive float mask broadcastable to ``(N, H, L, S)`` of the same ndim (it may need a
    gradient). ``seed=None`` draws one from torch's default generator, so ``set_seed`` and
    activation checkpointing (which replays that generator) repeat the same dropout.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be (N, H, L|S, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if attn_mask is not None and (attn_mask.dim() != 4 or attn_mask.dtype == torch.bool):
        raise ValueError(f"attn_mask must be a 4-D additive float mask, got {attn_mask.dtype} {tuple(attn_mask.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), device="cpu")) if dropout_p > 0 else 0
    rows = _block_rows(q.shape[0] * q.shape[1], q.shape[-2], k.shape[-2], block_bytes)
    return _BlockwiseAttention.apply(q, k, v, attn_mask, float(dropout_p), seed, rows)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    backends: Sequence[str] | None = None,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p)``, blockwise where that would
    hold the full score matrix: on a CPU, with dropout, and scores larger than ``2 * BLOCK_BYTES``.
    On a CPU with at least ``CONTIGUOUS_MIN_SCORES`` scores per head, q, k, v are made contiguous first.

    ``backends``: names of the only ``SDPBackend`` kernels allowed (``"MATH"``, ``"FLASH_ATTENTION"``, ...),
    entered with ``torch.nn.attention.sdpa_kernel`` for this call alone.
    """
    scores_bytes = 4 * q.shape[0] * q.shape[1] * q.shape[-2] * k.shape[-2]
    if dropout_p > 0 and q.device.type == "cpu" and scores_bytes > 2 * BLOCK_BYTES and q.dim() == 4:
        return blockwise_attention(q, k, v, attn_mask, dropout_p)
    if q.device.type == "cpu" and q.shape[-2] * k.shape[-2] >= CONTIGUOUS_MIN_SCORES:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # no-ops where they already are
    scope = sdpa_kernel([getattr(SDPBackend, name) for name in backends]) if backends else contextlib.nullcontext()
    with scope:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


# ------------------------------------------------------------------------ nn.MultiheadAttention
def forces_no_weights(module: nn.MultiheadAttention) -> bool:
    """Whether ``module``'s forward always passes ``need_weights=False`` (sam3's wrapper does)."""
    if getattr(module, "forces_no_weights", False):
        return True
    return any(f"{cls.__module__}.{cls.__qualname__}" in _FORCES_NO_WEIGHTS for cls in type(module).__mro__)


def additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    num_heads: int,
    tgt_len: int,
    src_len: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """Merge both masks into one additive float mask broadcastable to ``(N, H, L, S)``."""

    def to_float(mask: torch.Tensor) -> torch.Tensor:
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
        return mask.to(dtype)

    merged = None
    if attn_mask is not None:
        mask = to_float(attn_mask)
        if mask.dim() == 2:  # (L, S)
            mask = mask.view(1, 1, tgt_len, src_len)
        elif mask.dim() == 3:  # (N * H, L, S)
            mask = mask.view(batch, num_heads, tgt_len, src_len)
        else:
            raise ValueError(f"attn_mask must be 2-D or 3-D, got shape {tuple(attn_mask.shape)}")
        merged = mask
    if key_padding_mask is not None:
        mask = to_float(key_padding_mask).view(batch, 1, 1, src_len)  # (N, S) -> (N, 1, 1, S)
        merged = mask if merged is None else merged + mask
    return merged


def project_qkv(query, key, value, weight: torch.Tensor, bias: torch.Tensor | None):
    """q, k, v ``(N, L|S, E)`` from the packed ``weight`` ``(3E, E)``: one product where inputs are shared."""
    if query is key and key is value:  # self-attention: one packed product
        return F.linear(query, weight, bias).chunk(3, dim=-1)
    w_q, w_k, w_v = weight.chunk(3)
    b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
    if key is value:
        k, v = F.linear(key, torch.cat([w_k, w_v]), None if bias is None else torch.cat([b_k, b_v])).chunk(2, dim=-1)
    else:
        k, v = F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
    return F.linear(query, w_q, b_q), k, v


def multihead_attention(
    mha: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    in_projection: Callable | None = None,
) -> torch.Tensor:
    """``mha(query, key, value, need_weights=False)[0]`` computed through ``attention``.

    ``mha`` must have the packed ``in_proj_weight`` and neither ``bias_k`` nor ``add_zero_attn``.
    ``in_projection(query, key, value)`` returns q, k, v ``(N, L|S, E)`` (default: ``project_qkv``
    with ``mha``'s weights); ``mha.out_proj`` projects the result, dropout follows ``mha.training``.
    """
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = (t.unsqueeze(1) for t in (query, key, value))  # (L, E) -> (L, 1, E)
        key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
    same_kv = key is value
    same_qk = query is key
    if not (mha.batch_first and not unbatched):  # (L, N, E) -> (N, L, E)
        query = query.transpose(0, 1)
        key = query if same_qk else key.transpose(0, 1)
        value = key if same_kv else value.transpose(0, 1)
    batch, tgt_len, embed_dim = query.shape
    src_len = key.shape[1]
    heads, head_dim = mha.num_heads, embed_dim // mha.num_heads
    if in_projection is None:
        q, k, v = project_qkv(query, key, value, mha.in_proj_weight, mha.in_proj_bias)
    else:
        q, k, v = in_projection(query, key, value)
    q = q.view(batch, tgt_len, heads, head_dim).transpose(1, 2)  # (N, H, L, D)
    k = k.view(batch, src_len, heads, head_dim).transpose(1, 2)  # (N, H, S, D)
    v = v.view(batch, src_len, heads, head_dim).transpose(1, 2)  # (N, H, S, D)
    if is_causal and attn_mask is None:
        raise RuntimeError("is_causal needs attn_mask, as in nn.MultiheadAttention")
    mask = additive_mask(attn_mask, key_padding_mask, batch, heads, tgt_len, src_len, q.dtype)
    out = attention(q, k, v, attn_mask=mask, dropout_p=mha.dropout if mha.training else 0.0,
                    backends=getattr(mha, "sdpa_backends", None))  # (N, H, L, D)
    out = mha.out_proj(out.transpose(1, 2).reshape(batch, tgt_len, embed_dim))  # (N, L, E)
    if unbatched:
        return out.squeeze(0)
    return out if mha.batch_first else out.transpose(0, 1)  # (L, N, E)


class EfficientMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose forward without weights runs ``multihead_attention``.

    Made in place by ``use_efficient_attention`` (same parameters, buffers and state dict). Asked
    for weights, or with ``bias_k``, ``add_zero_attn``, separate k/v sizes or nested tensors, it is
    PyTorch's module unchanged.
    """

    forces_no_weights = False  # set per instance for modules converted from sam3's wrapper
    sdpa_backends: tuple[str, ...] | None = None  # set per instance: names of the only SDPA kernels it may use
    converted_from = "MultiheadAttention"  # the class it was built as (LoRA reports show this name)

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
        need_weights = need_weights and not self.forces_no_weights
        if need_weights or self.bias_k is not None or self.add_zero_attn or query.is_nested or not self._qkv_same_embed_dim:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        return multihead_attention(self, query, key, value, key_padding_mask, attn_mask, is_causal), None


def use_efficient_attention(model: nn.Module) -> int:
    """Turn every plain ``nn.MultiheadAttention`` in ``model`` (and sam3's ``MultiheadAttentionWrapper``)
    into ``EfficientMultiheadAttention`` in place; returns how many. Other subclasses, whose forward
    may do more, are left alone, as are modules already converted."""
    converted = 0
    for module in model.modules():
        cls = type(module)
        if cls is nn.MultiheadAttention or f"{cls.__module__}.{cls.__qualname__}" in _FORCES_NO_WEIGHTS:
            no_weights = forces_no_weights(module)
            module.__class__ = EfficientMultiheadAttention
            module.forces_no_weights = no_weights
            module.converted_from = cls.__name__
            converted += 1
    return converted
