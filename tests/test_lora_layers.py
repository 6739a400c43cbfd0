"""LoRA layers against PEFT and against merged-weight references, over tables of cases."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from sam3_lora_kit.lora import LoRALinear, LoRAMultiheadAttention


class _Holder(nn.Module):
    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _peft_linear(base: nn.Linear, rank: int, alpha: float, use_rslora: bool) -> nn.Module:
    """PEFT's own LoRA Linear around ``base``, made the way users make it."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["fc"], use_rslora=use_rslora, lora_dropout=0.0)
    return get_peft_model(_Holder(base), config).base_model.model.fc


def _randomise_b(layer: nn.Module, std: float = 0.1) -> None:
    """Give every B a non-zero value (a fresh adapter has B = 0 and changes nothing)."""
    generator = torch.Generator().manual_seed(1)
    for name, param in layer.named_parameters():
        if name.endswith("lora_B"):
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=generator) * std)


LINEAR_CASES = [
    # in, out, rank, alpha, rslora, bias, input shape prefix
    (16, 24, 4, 8, False, True, (5,)),
    (32, 32, 8, 16, False, False, (2, 7)),
    (64, 96, 16, 32, True, True, (3, 4)),
    (128, 48, 1, 1, False, True, (11,)),
]


@pytest.mark.parametrize("in_features,out_features,rank,alpha,use_rslora,bias,prefix", LINEAR_CASES)
def test_lora_linear_matches_peft(in_features, out_features, rank, alpha, use_rslora, bias, prefix):
    torch.manual_seed(0)
    base = nn.Linear(in_features, out_features, bias=bias)
    ours = LoRALinear(copy.deepcopy(base), rank, alpha, use_rslora=use_rslora)
    peft = _peft_linear(copy.deepcopy(base), rank, alpha, use_rslora)
    _randomise_b(ours, std=0.02)  # a trained adapter's scale: outputs of order 1
    with torch.no_grad():
        peft.lora_A["default"].weight.copy_(ours.lora_A)
        peft.lora_B["default"].weight.copy_(ours.lora_B)
    assert ours.scaling == pytest.approx(peft.scaling["default"])
    x = torch.randn(*prefix, in_features, requires_grad=True)
    x_peft = x.detach().clone().requires_grad_(True)
    y, y_peft = ours(x), peft(x_peft)
    assert (y - y_peft).abs().max().item() <= 1e-6
    grad_out = torch.randn_like(y)
    y.backward(grad_out)
    y_peft.backward(grad_out)
    assert torch.allclose(x.grad, x_peft.grad, atol=1e-5)
    assert torch.allclose(ours.lora_A.grad, peft.lora_A["default"].weight.grad, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ours.lora_B.grad, peft.lora_B["default"].weight.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rank,alpha,use_rslora,expected", [(8, 16, False, 2.0), (16, 16, True, 4.0), (4, 4, False, 1.0)])
def test_scaling_conventions(rank, alpha, use_rslora, expected):
    layer = LoRALinear(nn.Linear(8, 8), rank, alpha, use_rslora=use_rslora)
    assert layer.scaling == pytest.approx(expected)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fresh_adapter_is_identity_and_freezes_base(dropout):
    torch.manual_seed(0)
    base = nn.Linear(20, 30)
    reference = copy.deepcopy(base)
    layer = LoRALinear(base, 4, 8, dropout=dropout)
    x = torch.randn(6, 20)
    assert torch.equal(layer(x), reference(x))
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradients_reach_only_lora(dropout):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 10), 2, 4, dropout=dropout)
    _randomise_b(layer)
    layer(torch.randn(4, 12)).pow(2).sum().backward()
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    assert layer.lora_A.grad.abs().sum() > 0 and layer.lora_B.grad.abs().sum() > 0


@pytest.mark.parametrize("out_splits,enabled", [((8, 8, 8), (True, False, True)), ((8, 8, 8), (True, True, True)), ((4, 12), (False, True))])
def test_split_linear_adapts_only_enabled_slices(out_splits, enabled):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, sum(out_splits)), 2, 2, out_splits=out_splits, enabled_splits=enabled)
    _randomise_b(layer)
    delta = layer.delta_weight()
    for rows, on in zip(delta.split(list(out_splits)), enabled):
        assert (rows.abs().sum() > 0) == on
    x = torch.randn(3, 6)
    expected = layer.base_layer(x) + x @ delta.t()
    assert torch.allclose(layer(x), expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_matches_base_dtype_path(dtype):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 16), 4, 8)
    _randomise_b(layer)
    x = torch.randn(5, 32)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
        y_ref = nn.functional.linear(x, layer.weight.detach(), layer.bias)
    assert y.dtype == y_ref.dtype == dtype
    assert torch.allclose(y.float(), y_ref.float(), atol=5e-2, rtol=2e-2)
    y.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and torch.isfinite(layer.lora_A.grad).all()


@pytest.mark.parametrize("use_rslora", [False, True])
def test_merge_unmerge_round_trip(use_rslora):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(24, 24), 4, 8, use_rslora=use_rslora)
    _randomise_b(layer, std=0.5)
    original = layer.base_layer.weight.detach().clone()
    x = torch.randn(7, 24)
    unmerged = layer(x)
    layer.merge()
    assert torch.allclose(layer(x), unmerged, atol=1e-5)
    assert not torch.allclose(layer.base_layer.weight, original)
    layer.unmerge()
    assert torch.allclose(layer.base_layer.weight, original, atol=1e-6)
    assert torch.allclose(layer(x), unmerged, atol=1e-6)


def _reference_attention(wrapper: LoRAMultiheadAttention, batch_first: bool) -> nn.MultiheadAttention:
    """A plain nn.MultiheadAttention holding the wrapper's merged weights."""
    base = wrapper.base_layer
    reference = nn.MultiheadAttention(base.embed_dim, base.num_heads, bias=base.in_proj_bias is not None, batch_first=batch_first)
    with torch.no_grad():
        reference.in_proj_weight.copy_(wrapper.in_proj_weight)
        if base.in_proj_bias is not None:
            reference.in_proj_bias.copy_(base.in_proj_bias)
            reference.out_proj.bias.copy_(base.out_proj.bias)
        reference.out_proj.weight.copy_(base.out_proj.weight)
    return reference


MHA_MASKS = ["none", "key_padding", "attn_bool", "attn_float", "both", "attn_3d"]


def _masks(kind: str, batch: int, heads: int, length: int):
    key_padding = torch.zeros(batch, length, dtype=torch.bool)
    key_padding[0, length - 3:] = True
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
    return {
        "none": {},
        "key_padding": {"key_padding_mask": key_padding},
        "attn_bool": {"attn_mask": causal},
        "attn_float": {"attn_mask": torch.randn(length, length)},
        "both": {"attn_mask": causal, "key_padding_mask": key_padding},
        "attn_3d": {"attn_mask": torch.randn(batch * heads, length, length)},
    }[kind]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask_kind", MHA_MASKS)
@pytest.mark.parametrize("targets", [("q", "k", "v", "out"), ("q", "v"), ("out",)])
@pytest.mark.parametrize("need_weights", [False, True])
def test_lora_mha_equals_merged_reference(batch_first, mask_kind, targets, need_weights):
    torch.manual_seed(0)
    embed_dim, heads, batch, length = 32, 4, 3, 9
    wrapper = LoRAMultiheadAttention(nn.MultiheadAttention(embed_dim, heads, batch_first=batch_first), 4, 8, targets=targets)
    _randomise_b(wrapper, std=0.3)
    reference = _reference_attention(wrapper, batch_first)
    shape = (batch, length, embed_dim) if batch_first else (length, batch, embed_dim)
    x = torch.randn(shape)
    masks = _masks(mask_kind, batch, heads, length)
    out, weights = wrapper(x, x, x, need_weights=need_weights, **masks)
    out_ref, weights_ref = reference(x, x, x, need_weights=need_weights, **masks)
    assert torch.allclose(out, out_ref, atol=1e-5)
    assert (weights is None) == (weights_ref is None)
    if need_weights:
        assert torch.allclose(weights, weights_ref, atol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
def test_lora_mha_cross_attention_and_gradients(batch_first):
    torch.manual_seed(0)
    wrapper = LoRAMultiheadAttention(nn.MultiheadAttention(16, 2, batch_first=batch_first), 2, 4)
    _randomise_b(wrapper)
    reference = _reference_attention(wrapper, batch_first)
    q_shape, kv_shape = ((2, 5, 16), (2, 7, 16)) if batch_first else ((5, 2, 16), (7, 2, 16))
    query, key, value = torch.randn(q_shape), torch.randn(kv_shape), torch.randn(kv_shape)
    for k, v in ((key, value), (key, key)):
        out, _ = wrapper(query, k, v, need_weights=False)
        assert torch.allclose(out, reference(query, k, v, need_weights=False)[0], atol=1e-5)
    wrapper(query, key, value)[0].sum().backward()
    trainable = {name for name, p in wrapper.named_parameters() if p.grad is not None}
    assert trainable == {"lora_A", "lora_B", "base_layer.out_proj.lora_A", "base_layer.out_proj.lora_B"}


def test_lora_mha_keeps_attributes_and_fast_path_sees_adapter():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    reference = copy.deepcopy(layer)
    layer.self_attn = LoRAMultiheadAttention(layer.self_attn, 4, 8)
    _randomise_b(layer.self_attn, std=0.3)
    assert layer.self_attn.num_heads == 4 and layer.self_attn.batch_first and layer.self_attn.embed_dim == 32
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(layer.self_attn.in_proj_weight)
        reference.self_attn.out_proj.weight.copy_(layer.self_attn.out_proj.weight)
    layer.eval(), reference.eval()
    x = torch.randn(2, 6, 32)
    with torch.no_grad():  # the encoder layer's fused fast path reads the raw weights
        assert torch.allclose(layer(x), reference(x), atol=1e-5)
        plain = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        plain.load_state_dict(reference.state_dict())
        plain.self_attn.in_proj_weight.copy_(layer.self_attn.base_layer.in_proj_weight)
        plain.self_attn.out_proj.weight.copy_(layer.self_attn.base_layer.out_proj.base_layer.weight)
        plain.eval()
        assert not torch.allclose(layer(x), plain(x), atol=1e-3)  # the adapter is in effect


def test_lora_mha_merge_unmerge():
    torch.manual_seed(0)
    wrapper = LoRAMultiheadAttention(nn.MultiheadAttention(16, 4), 2, 4)
    _randomise_b(wrapper, std=0.3)
    x = torch.randn(5, 2, 16)
    before = wrapper(x, x, x)[0]
    original = wrapper.base_layer.in_proj_weight.detach().clone()
    wrapper.merge()
    assert torch.allclose(wrapper(x, x, x)[0], before, atol=1e-5)
    wrapper.unmerge()
    assert torch.allclose(wrapper.base_layer.in_proj_weight, original, atol=1e-6)


def test_lora_mha_does_not_build_score_matrix(monkeypatch):
    """need_weights=False goes through scaled_dot_product_attention, never softmax over L x S."""
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(torch.nn.functional, "softmax", lambda *a, **k: pytest.fail("softmax called: scores materialised"))
    wrapper = LoRAMultiheadAttention(nn.MultiheadAttention(16, 2, batch_first=True), 2, 4)
    x = torch.randn(1, 50, 16)
    wrapper(x, x, x, need_weights=False)
    assert calls


@pytest.mark.parametrize("rank", [0, -1])
def test_bad_rank_raises(rank):
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), rank, 1)


@pytest.fixture
def small_fused_floor(monkeypatch):
    """Let the fused path take small test layers (its activation floor is tuned for real layer sizes)."""
    from sam3_lora_kit.lora import layers

    monkeypatch.setattr(layers, "_MIN_FUSED_ACTIVATIONS", 0)


@pytest.mark.parametrize("in_features,out_features,tokens", [(64, 96, 512), (256, 256, 1024), (32, 512, 600)])
def test_many_token_fused_path_is_as_accurate_as_peft(in_features, out_features, tokens, small_fused_floor):
    """With many tokens the update is folded into the weight; check it against float64 and PEFT."""
    from sam3_lora_kit.lora.layers import _use_fused

    torch.manual_seed(0)
    base = nn.Linear(in_features, out_features)
    ours = LoRALinear(copy.deepcopy(base), 8, 16)
    peft = _peft_linear(copy.deepcopy(base), 8, 16, False)
    _randomise_b(ours, std=0.02)
    with torch.no_grad():
        peft.lora_A["default"].weight.copy_(ours.lora_A)
        peft.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(tokens, in_features)
    assert _use_fused(x, base.weight)
    with torch.no_grad():
        exact = ours.base_layer.double()(x.double()) + (x.double() @ ours.lora_A.double().t() @ ours.lora_B.double().t()) * ours.scaling
        ours.base_layer.float()
        error_ours = (ours(x).double() - exact).abs().max().item()
        error_peft = (peft(x).double() - exact).abs().max().item()
    assert error_ours <= 2 * error_peft + 1e-7
    assert error_ours <= 2e-6


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def num_threads(request):
    """Run a test at 1 and at 2 CPU threads (the thin gradient products split over tokens only with 2+)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _float64_reference(layer: LoRALinear, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``y``, ``grad_x``, ``grad_A``, ``grad_B`` of the LoRA layer computed in float64 by plain autograd."""
    base = layer.base_layer
    x64 = x.detach().double().requires_grad_(True)
    a64 = layer.lora_A.detach().double().requires_grad_(True)
    b64 = layer.lora_B.detach().double().requires_grad_(True)
    bias = base.bias.double() if base.bias is not None else None
    y = nn.functional.linear(x64, base.weight.double(), bias) + (x64 @ a64.t() @ b64.t()) * layer.scaling
    y.backward(grad_out.double())
    return y.detach(), x64.grad, a64.grad, b64.grad


FUSED_GRAD_CASES = [
    # in, out, rank, bias, input shape prefix (tokens not divisible by the chunk count included)
    (64, 96, 8, True, (1, 1000)),
    (256, 256, 8, False, (2, 517)),
    (32, 512, 16, True, (600,)),
    (128, 48, 4, True, (3, 257)),
    (1024, 1024, 8, True, (600,)),  # out >= in >= 1024: the stacked backward
]


@pytest.mark.parametrize("in_features,out_features,rank,bias,prefix", FUSED_GRAD_CASES)
def test_fused_path_gradients_are_as_accurate_as_peft(in_features, out_features, rank, bias, prefix, num_threads, small_fused_floor):
    """Output and all three gradients of the fused path against float64, no worse than PEFT's."""
    from sam3_lora_kit.lora.layers import _use_fused

    torch.manual_seed(0)
    base = nn.Linear(in_features, out_features, bias=bias)
    ours = LoRALinear(copy.deepcopy(base), rank, 2 * rank)
    peft = _peft_linear(copy.deepcopy(base), rank, 2 * rank, False)
    _randomise_b(ours, std=0.02)
    with torch.no_grad():
        peft.lora_A["default"].weight.copy_(ours.lora_A)
        peft.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(*prefix, in_features)
    grad_out = torch.randn(*prefix, out_features)
    assert _use_fused(x, base.weight)
    exact = _float64_reference(ours, x, grad_out)
    errors = {}
    for name, layer, factors in (("ours", ours, (ours.lora_A, ours.lora_B)),
                                 ("peft", peft, (peft.lora_A["default"].weight, peft.lora_B["default"].weight))):
        x_in = x.clone().requires_grad_(True)
        y = layer(x_in)
        y.backward(grad_out)
        got = (y, x_in.grad, *(f.grad for f in factors))
        errors[name] = [((g.double() - e).abs().max() / e.abs().max()).item() for g, e in zip(got, exact)]
    for mine, theirs in zip(errors["ours"], errors["peft"]):
        assert mine <= 2 * theirs + 1e-7
        assert mine <= 2e-6


@pytest.mark.parametrize("in_features,out_features,contiguous",
                         [(256, 256, True), (64, 128, True), (1024, 512, True), (32, 512, False), (1024, 1024, False)])
def test_fused_backward_hands_a_contiguous_input_gradient_unless_stacked(in_features, out_features, contiguous,
                                                                         small_fused_floor):
    """Where ``out <= 2 in`` grad_x comes from its own GEMM (contiguous: nobody downstream copies it);
    wider outputs, and layers with out >= in >= 1024, take it as a column slice of one stacked GEMM,
    which saves re-reading grad_y in a thin product (``_stacked_backward``)."""
    from sam3_lora_kit.lora.layers import _use_fused

    layer = LoRALinear(nn.Linear(in_features, out_features), 4, 8)
    x = torch.randn(600, in_features, requires_grad=True)
    assert _use_fused(x, layer.base_layer.weight)
    captured = {}
    x.register_hook(lambda grad: captured.setdefault("grad", grad))  # before AccumulateGrad's own copy
    layer(x).backward(torch.randn(600, out_features))
    assert captured["grad"].shape == x.shape and captured["grad"].is_contiguous() is contiguous


@pytest.mark.parametrize("tokens,fused", [(1000, True), (1000, False), (40, False)])
def test_output_allows_inplace_ops_views_and_second_backward(tokens, fused, monkeypatch):
    """The fused output is a column slice of a wider buffer, the in-place path's is written through
    ``out=``: in-place ops, head-splitting views and ``retain_graph`` backward passes must behave as
    with ``nn.Linear`` on either path."""
    from sam3_lora_kit.lora import layers

    if fused:
        monkeypatch.setattr(layers, "_MIN_FUSED_ACTIVATIONS", 0)
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 3 * 32), 4, 8)
    assert layers._use_fused(torch.empty(2, tokens, 64), layer.base_layer.weight) is fused
    _randomise_b(layer)
    reference = nn.Linear(64, 3 * 32)
    with torch.no_grad():
        reference.weight.copy_(layer.weight)
        reference.bias.copy_(layer.bias)
    x = torch.randn(2, tokens, 64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    outs = []
    for module, inp in ((layer, x), (reference, x_ref)):
        y = module(inp)
        y.mul_(2.0).add_(1.0)  # in-place on the output
        qkv = y.view(2, tokens, 3, 4, 8).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, head_dim), as a ViT splits qkv
        outs.append(qkv[0].sum() + qkv[2].pow(2).sum())
    for out, inp in zip(outs, (x, x_ref)):
        out.backward(retain_graph=True)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-4)
    grad_a = layer.lora_A.grad.clone()
    outs[0].backward()  # a second pass through the saved tensors gives the same increment
    assert torch.allclose(layer.lora_A.grad, 2 * grad_a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tokens", [1000, 40])
def test_frozen_factors_still_pass_input_gradient(tokens):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(64, 96), 4, 8)
    _randomise_b(layer)
    layer.lora_A.requires_grad_(False), layer.lora_B.requires_grad_(False)
    x = torch.randn(tokens, 64, requires_grad=True)
    layer(x).sum().backward()
    expected = torch.ones(tokens, 96) @ layer.weight.detach()
    assert torch.allclose(x.grad, expected, atol=1e-4)
    assert layer.lora_A.grad is None and layer.lora_B.grad is None


@pytest.mark.parametrize("alpha", [1.0, 2.5])
@pytest.mark.parametrize("tokens,dtype", [(1000, torch.float32), (1029, torch.float64), (300, torch.float32), (1000, torch.bfloat16)])
def test_thin_product_matches_matmul(tokens, dtype, alpha, num_threads):
    from sam3_lora_kit.lora.layers import _thin_product

    torch.manual_seed(0)
    a, b = torch.randn(tokens, 8, dtype=dtype), torch.randn(tokens, 200, dtype=dtype)
    exact = alpha * (a.double().t() @ b.double())
    got = _thin_product(a, b, alpha)
    assert got.shape == (8, 200) and got.dtype == dtype
    plain_error = ((alpha * (a.t() @ b)).double() - exact).abs().max()
    assert (got.double() - exact).abs().max() <= 2 * plain_error + 1e-12


@pytest.mark.parametrize("in_features,out_features,tokens,dtype,fused", [
    (1024, 3072, 5184, torch.float32, True),  # ViT qkv at 1008 px
    (1024, 1024, 400, torch.float32, False),  # below both the weight size and the floor
    (256, 256, 200, torch.float32, False),  # decoder queries: above the weight size, below the floor
    (256, 256, 4 * 200, torch.float32, False),
    (256, 256, 1600, torch.float32, True),
    (256, 2048, 5184, torch.bfloat16, False),  # half precision never folds the update into the weight
])
def test_path_choice_follows_tokens_weight_size_and_dtype(in_features, out_features, tokens, dtype, fused):
    from sam3_lora_kit.lora.layers import _use_fused

    x = torch.empty(tokens, in_features, dtype=dtype)
    assert _use_fused(x, torch.empty(out_features, in_features, dtype=dtype)) is fused


def test_path_choice_never_folds_the_update_off_the_cpu():
    from sam3_lora_kit.lora.layers import _use_fused

    x, weight = torch.empty(5184, 1024), torch.empty(3072, 1024)  # folded on a CPU
    assert _use_fused(x, weight)
    assert not _use_fused(x.to("meta"), weight.to("meta"))


def test_merged_linear_computes_exactly_the_base():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 48), 4, 8)
    _randomise_b(layer, std=0.3)
    layer.merge()
    x = torch.randn(5, 32)
    assert torch.equal(layer(x), nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias))


@pytest.mark.parametrize("training", [False, True])
def test_merged_mha_computes_exactly_the_base(training):
    """A merged wrapper runs the wrapped module itself: bit-identical to a plain module with the merged weights."""
    torch.manual_seed(0)
    wrapper = LoRAMultiheadAttention(nn.MultiheadAttention(32, 4, batch_first=True), 4, 8)
    _randomise_b(wrapper, std=0.3)
    wrapper.merge()
    reference = _reference_attention(wrapper, batch_first=True).requires_grad_(False)  # frozen like the wrapped module
    wrapper.train(training), reference.train(training)
    x = torch.randn(2, 9, 32)
    assert torch.equal(wrapper(x, x, x, need_weights=False)[0], reference(x, x, x, need_weights=False)[0])


@pytest.mark.parametrize("pattern", ["q=k!=v", "cross"])
def test_lora_dropout_applies_when_query_key_value_differ(pattern):
    """SAM 3 calls self-attention with q = k = tgt + pos and v = tgt: LoRA dropout must act there too."""
    torch.manual_seed(0)
    layer = LoRAMultiheadAttention(nn.MultiheadAttention(16, 4, batch_first=True), 4, 8, dropout=0.5, targets=("q", "k", "v"))
    _randomise_b(layer, std=0.5)
    tgt, pos, memory = torch.randn(3, 2, 6, 16).unbind(0)
    query = tgt + pos
    key, value = (query, tgt) if pattern == "q=k!=v" else (memory, memory)
    layer.train()
    draws = [layer(query, key, value, need_weights=False)[0] for _ in range(3)]
    layer.eval()
    clean = layer(query, key, value, need_weights=False)[0]
    assert not torch.allclose(draws[0], draws[1]) and not torch.allclose(draws[0], clean)
    layer.train()
    layer.lora_dropout.p = 0.0  # dropout that drops nothing: the eval result
    assert torch.allclose(layer(query, key, value, need_weights=False)[0], clean, atol=1e-6)
    draws[0].sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0


@pytest.mark.parametrize("tokens", [1000, 40])
def test_second_derivatives_raise_instead_of_being_wrong(tokens, monkeypatch):
    from sam3_lora_kit.lora import layers

    monkeypatch.setattr(layers, "_MIN_FUSED_ACTIVATIONS", 0 if tokens == 1000 else 1 << 40)
    layer = LoRALinear(nn.Linear(64, 96), 4, 8)
    _randomise_b(layer)
    x = torch.randn(tokens, 64, requires_grad=True)
    (grad_b,) = torch.autograd.grad(layer(x).pow(2).sum(), layer.lora_B, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad_b.pow(2).sum().backward()
