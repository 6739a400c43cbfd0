"""Blockwise attention with dropout (``sam3_lora_kit.lora.attention``): the same function as
PyTorch's attention, exact gradients, real dropout, and no ``(N, H, L, S)`` tensor kept."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from sam3_lora_kit.lora import LoRAMultiheadAttention
from sam3_lora_kit.lora import attention as attention_module
from sam3_lora_kit.lora.attention import EfficientMultiheadAttention, blockwise_attention, use_efficient_attention

N, H, L, S, D = 2, 3, 37, 29, 8
# A block of 5 query rows: every call below runs 8 blocks, the last one short.
FIVE_ROWS = 4 * N * H * S * 5


def _qkv(dtype=torch.float64, dv: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(N, H, L, D, dtype=dtype, generator=generator).requires_grad_()
    k = torch.randn(N, H, S, D, dtype=dtype, generator=generator).requires_grad_()
    v = torch.randn(N, H, S, dv, dtype=dtype, generator=generator).requires_grad_()
    return q, k, v


def _mask(shape, dtype=torch.float64):
    generator = torch.Generator().manual_seed(1)
    mask = torch.randn(shape, dtype=dtype, generator=generator)
    mask = mask.masked_fill(torch.rand(shape, generator=generator) < 0.2, float("-inf"))
    if shape[-2] == L:
        mask[..., 3, :] = float("-inf")  # a query row that sees no key at all
    return mask.requires_grad_()


MASK_SHAPES = [None, (1, 1, L, S), (N, H, L, S), (N, 1, 1, S)]


@pytest.mark.parametrize("mask_shape", MASK_SHAPES, ids=str)
def test_without_dropout_it_is_pytorchs_attention(mask_shape):
    q, k, v = _qkv()
    mask = None if mask_shape is None else _mask(mask_shape)
    inputs = [t for t in (q, k, v, mask) if t is not None]
    ours = blockwise_attention(q, k, v, mask, 0.0, block_bytes=FIVE_ROWS)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, inputs, grad_out)
    reference_grads = torch.autograd.grad(reference, inputs, grad_out)
    for mine, theirs in zip(ours_grads, reference_grads):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mask_shape", [None, (1, 2, 11, 7), (1, 1, 11, 7)], ids=str)
def test_gradients_with_dropout_match_finite_differences(mask_shape):
    """Backward regenerates each block's dropout mask; a wrong draw fails gradcheck."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, length, 4, dtype=torch.float64, generator=generator).requires_grad_() for length in (11, 7, 7))
    mask = None
    if mask_shape is not None:
        mask = torch.randn(mask_shape, dtype=torch.float64, generator=generator)
        mask[..., 2, :3] = float("-inf")
        mask.requires_grad_()

    def run(q, k, v, mask):
        return blockwise_attention(q, k, v, mask, 0.3, seed=1234, block_bytes=4 * 2 * 7 * 3)  # blocks of 3 rows

    assert torch.autograd.gradcheck(run, (q, k, v, mask))


def test_dropout_drops_a_fraction_p_and_rescales_the_rest():
    """With v = identity the output is the dropped, rescaled probability matrix itself."""
    n, h, length, p = 2, 4, 64, 0.25
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(n, h, length, 16, dtype=torch.float64, generator=generator)
    k = torch.randn(n, h, length, 16, dtype=torch.float64, generator=generator)
    v = torch.eye(length, dtype=torch.float64).expand(n, h, length, length)
    dropped = blockwise_attention(q, k, v, None, p, seed=7, block_bytes=4 * n * h * length * 10)
    probs = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1)
    kept = dropped != 0
    assert abs((~kept).double().mean().item() - p) < 0.02  # 32,768 draws
    torch.testing.assert_close(dropped[kept], probs[kept] / (1 - p))
    again = blockwise_attention(q, k, v, None, p, seed=7, block_bytes=4 * n * h * length * 10)
    assert torch.equal(dropped, again)
    other = blockwise_attention(q, k, v, None, p, seed=8, block_bytes=4 * n * h * length * 10)
    assert not torch.equal(dropped, other)


def test_seed_comes_from_torchs_generator_so_checkpointing_repeats_the_draws():
    q, k, v = _qkv(torch.float32)

    def run():
        return blockwise_attention(q, k, v, None, 0.5, block_bytes=FIVE_ROWS)

    torch.manual_seed(3)
    first = run()
    torch.manual_seed(3)
    assert torch.equal(first, run())
    assert not torch.equal(first, run())  # the generator moved on: a new draw

    grad_out = torch.randn_like(first)
    torch.manual_seed(5)
    plain = torch.autograd.grad(run(), (q, k, v), grad_out)
    torch.manual_seed(5)
    recomputed = torch.autograd.grad(checkpoint(run, use_reentrant=False), (q, k, v), grad_out)
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_saves_no_score_sized_tensor():
    """Autograd keeps q, k, v, the output and the row log-sum-exp: nothing of size N*H*L*S."""
    q, k, v = _qkv(torch.float32)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = blockwise_attention(q, k, v, None, 0.1, block_bytes=FIVE_ROWS)
    assert saved, "nothing saved: the hook did not run"
    assert max(t.numel() for t in saved) < N * H * L * S
    expected = {q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr()}
    assert expected <= {t.data_ptr() for t in saved}
    assert sum(t.numel() for t in saved) == q.numel() + k.numel() + v.numel() + out.numel() + N * H * L


def test_half_precision_computes_in_float32():
    q, k, v = _qkv(torch.float32)
    mask = _mask((1, 1, L, S), torch.float32).detach()
    reference = blockwise_attention(q, k, v, mask, 0.2, seed=9, block_bytes=FIVE_ROWS)
    half = blockwise_attention(*(t.detach().bfloat16() for t in (q, k, v)), mask.bfloat16(), 0.2, seed=9,
                               block_bytes=FIVE_ROWS)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference.detach(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda q, k, v: blockwise_attention(q[0], k[0], v[0]), "must be"),
        (lambda q, k, v: blockwise_attention(q, k, v, torch.zeros(1, 1, L, S, dtype=torch.bool)), "additive float mask"),
        (lambda q, k, v: blockwise_attention(q, k, v, None, 1.0), "dropout_p"),
    ],
)
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call(*_qkv(torch.float32))


def test_lora_attention_trains_on_cpu_without_the_score_matrix(monkeypatch):
    """``LoRAMultiheadAttention`` with attention dropout in train mode on a CPU takes the blockwise
    path once the scores pass the threshold; gradients reach the LoRA factors."""
    monkeypatch.setattr(attention_module, "BLOCK_BYTES", 4096)
    torch.manual_seed(0)
    embed, heads, tokens = 32, 4, 48
    layer = LoRAMultiheadAttention(nn.MultiheadAttention(embed, heads, dropout=0.1, batch_first=True), rank=4, alpha=8)
    nn.init.normal_(layer.lora_B, std=0.1)
    layer.train()
    x = torch.randn(2, tokens, embed)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, _ = layer(x, x, x, need_weights=False)
    assert max(t.numel() for t in saved) < 2 * heads * tokens * tokens
    out.square().sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0
    # Without dropout (eval) the same layer is exactly PyTorch's attention again.
    layer.eval()
    with torch.no_grad():
        reference = F.scaled_dot_product_attention(
            *(t.view(2, tokens, heads, embed // heads).transpose(1, 2) for t in F.linear(x, layer.in_proj_weight, layer.base_layer.in_proj_bias).chunk(3, -1))
        )
        reference = layer.base_layer.out_proj(reference.transpose(1, 2).reshape(2, tokens, embed))
        torch.testing.assert_close(layer(x, x, x, need_weights=False)[0], reference)


# ------------------------------------------------------------------ EfficientMultiheadAttention


def _mha_cases():
    """(batch_first, query/key/value shapes' sharing, masks) covering nn.MultiheadAttention's forms."""
    n, length, src, embed = 2, 6, 5, 16
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, length, embed, generator=generator)
    memory = torch.randn(n, src, embed, generator=generator)
    other = torch.randn(n, src, embed, generator=generator)
    padding = torch.zeros(n, src, dtype=torch.bool)
    padding[1, -2:] = True
    self_padding = torch.zeros(n, length, dtype=torch.bool)
    self_padding[0, -1] = True
    causal = torch.triu(torch.full((length, length), float("-inf")), 1)
    per_head = torch.randn(n * 4, length, src, generator=generator)
    return [
        ("self", dict(query=x, key=x, value=x)),
        ("self+padding", dict(query=x, key=x, value=x, key_padding_mask=self_padding)),
        ("self+causal float mask", dict(query=x, key=x, value=x, attn_mask=causal)),
        ("cross k is v", dict(query=x, key=memory, value=memory, key_padding_mask=padding)),
        ("cross k, v apart + per-head mask", dict(query=x, key=memory, value=other, attn_mask=per_head)),
        ("bool attn_mask", dict(query=x, key=memory, value=memory, attn_mask=torch.rand(length, src, generator=generator) < 0.3)),
        ("unbatched", dict(query=x[0], key=memory[0], value=memory[0])),
    ]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("case", _mha_cases(), ids=lambda c: c[0])
def test_efficient_module_is_the_module_it_replaced(batch_first, case):
    import copy

    _, kwargs = case
    torch.manual_seed(0)
    original = nn.MultiheadAttention(16, 4, batch_first=batch_first)
    converted = copy.deepcopy(original)
    assert use_efficient_attention(converted) == 1
    assert type(converted) is EfficientMultiheadAttention
    assert converted.state_dict().keys() == original.state_dict().keys()
    inputs = dict(kwargs)
    if not batch_first and inputs["query"].dim() == 3:
        for name in ("query", "key", "value"):
            inputs[name] = inputs[name].transpose(0, 1)
    expected, _ = original(**inputs, need_weights=False)
    got, weights = converted(**inputs, need_weights=False)
    assert weights is None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # The same gradients for every parameter, and weights still returned when asked for.
    grad = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(expected, list(original.parameters()), grad),
                    torch.autograd.grad(got, list(converted.parameters()), grad)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    out, weights = converted(**inputs)
    assert weights is not None
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_sam3_wrapper_keeps_its_no_weights_forward_and_other_subclasses_are_left_alone():
    from sam3.model.model_misc import MultiheadAttentionWrapper

    class Custom(nn.MultiheadAttention):
        def forward(self, *args, **kwargs):
            return super().forward(*args, **kwargs)

    model = nn.ModuleDict({"wrapper": MultiheadAttentionWrapper(16, 4), "custom": Custom(16, 4), "plain": nn.MultiheadAttention(16, 4)})
    assert use_efficient_attention(model) == 2
    assert type(model["custom"]) is Custom
    assert model["wrapper"].forces_no_weights and not model["plain"].forces_no_weights
    assert (model["wrapper"].converted_from, model["plain"].converted_from) == ("MultiheadAttentionWrapper", "MultiheadAttention")
    x = torch.randn(5, 2, 16)
    assert model["wrapper"](x, x, x)[1] is None  # need_weights defaults to True; the wrapper never returns them
    assert model["plain"](x, x, x)[1] is not None
    assert use_efficient_attention(model) == 0  # already converted


def test_frozen_attention_passes_gradients_on_without_the_score_matrix(monkeypatch):
    """A frozen converted module (a detector under a ViT adapter) in train mode with dropout: no L x S tensor saved."""
    monkeypatch.setattr(attention_module, "BLOCK_BYTES", 4096)
    tokens, heads = 48, 4
    module = nn.MultiheadAttention(32, heads, dropout=0.1, batch_first=True).requires_grad_(False)
    use_efficient_attention(module)
    module.train()
    x = torch.randn(2, tokens, 32, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, _ = module(x, x, x, need_weights=False)
    assert saved and max(t.numel() for t in saved) < 2 * heads * tokens * tokens
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_built_sam3_models_use_efficient_attention():
    from sam3_lora_kit.sam3 import build_sam3

    from sam3_lora_kit.sam3 import apply_lora

    model = build_sam3("tiny")
    kinds = {type(m).__name__ for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    assert kinds == {"EfficientMultiheadAttention"}
    report = apply_lora(model, "detector-attn", rank=2, alpha=4)
    # The LoRA report names the class each module was built as, not the conversion.
    assert {row["kind"] for row in report.layers} == {"MultiheadAttention", "MultiheadAttentionWrapper"}


def test_attention_enters_only_the_named_sdpa_kernels() -> None:
    """``backends`` limits ``scaled_dot_product_attention`` to those kernels for that call alone."""
    q, k, v = _qkv(torch.float32)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention_module.attention(q, k, v, backends=("MATH",)), expected)
    with pytest.raises(RuntimeError, match="No viable backend|No available kernel"):  # the CPU has no efficient-attention kernel
        attention_module.attention(q, k, v, backends=("EFFICIENT_ATTENTION",))
    torch.testing.assert_close(attention_module.attention(q, k, v), expected)  # nothing left behind


def test_pinned_kernels_hold_in_the_forward_and_in_checkpoint_recomputation(monkeypatch) -> None:
    """A module's ``sdpa_backends`` reach its attention call, also when backward recomputes it."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    use_efficient_attention(mha)
    x = torch.randn(2, 5, 16, requires_grad=True)
    mha.sdpa_backends = ("EFFICIENT_ATTENTION",)
    with pytest.raises(RuntimeError, match="No viable backend|No available kernel"):
        mha(x, x, x, need_weights=False)
    mha.sdpa_backends = ("MATH",)
    seen = []
    original = attention_module.sdpa_kernel

    def spy(backends):
        seen.append(tuple(backends))
        return original(backends)

    monkeypatch.setattr(attention_module, "sdpa_kernel", spy)
    out = checkpoint(lambda t: mha(t, t, t, need_weights=False)[0], x, use_reentrant=False)
    out.sum().backward()
    assert seen == [(torch.nn.attention.SDPBackend.MATH,)] * 2  # forward, then the recomputation in backward
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("scores_per_head,contiguous", [(L * L, True), (L * L + 1, False)])
def test_large_cpu_attention_gets_contiguous_heads(monkeypatch, scores_per_head, contiguous) -> None:
    """From ``CONTIGUOUS_MIN_SCORES`` scores per head, token-major q, k, v views reach the kernel as
    heads-first contiguous copies; the result and the gradients are the same either way."""
    monkeypatch.setattr(attention_module, "CONTIGUOUS_MIN_SCORES", scores_per_head)
    generator = torch.Generator().manual_seed(0)
    packed = torch.randn(N, L, 3 * H * D, generator=generator, requires_grad=True)  # a qkv projection's output
    q, k, v = (t.view(N, L, H, D).transpose(1, 2) for t in packed.chunk(3, dim=-1))  # (N, H, L, D) views
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q_in, k_in, v_in, **kwargs):
        seen.append(all(t.is_contiguous() for t in (q_in, k_in, v_in)))
        return original(q_in, k_in, v_in, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy)
    out = attention_module.attention(q, k, v)  # self-attention: L * L scores per head
    assert seen == [contiguous]
    grad_out = torch.randn(out.shape, generator=generator)
    (grad_packed,) = torch.autograd.grad(out, packed, grad_out)
    packed_ref = packed.detach().clone().requires_grad_()
    q_ref, k_ref, v_ref = (t.view(N, L, H, D).transpose(1, 2) for t in packed_ref.chunk(3, dim=-1))
    expected = original(q_ref, k_ref, v_ref)
    expected.backward(grad_out)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad_packed, packed_ref.grad)
