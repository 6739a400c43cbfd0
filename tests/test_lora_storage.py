"""store_frozen_weights: frozen base weights kept in half precision under a LoRA adapter."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from sam3_lora_kit.lora import (
    architecture_fingerprint,
    inject_lora,
    load_adapter,
    lora_state_dict,
    merge_lora,
    restore_frozen_weights,
    save_adapter,
    saving_stored_weights,
    store_frozen_weights,
    stored_parameter_names,
)


class ToyTransformer(nn.Module):
    def __init__(self, dim: int = 256, heads: int = 4, layers: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.scale = nn.Parameter(torch.ones(dim))  # a parameter outside PyTorch's layer types
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 8) -> (B, classes)
        return self.head((self.encoder(self.embed(x)) * self.scale).mean(dim=1))


TARGETS = ["self_attn", "linear1"]


def _lora_toy(seed: int = 0) -> ToyTransformer:
    torch.manual_seed(seed)
    model = ToyTransformer()
    inject_lora(model, TARGETS, rank=4, alpha=8)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _round_frozen_through(model: nn.Module, dtype: torch.dtype, min_numel: int) -> None:
    """The reference: the same frozen tensors rounded to ``dtype`` and kept in float32."""
    with torch.no_grad():
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad and param.numel() >= min_numel and isinstance(module, (nn.Linear, nn.MultiheadAttention)):
                    param.copy_(param.to(dtype).float())


def _loss_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_large_frozen_tensors_are_stored_in_half_and_the_rest_untouched():
    model = _lora_toy()
    trainable_before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    report = store_frozen_weights(model, torch.bfloat16, min_numel=1 << 16)
    # 256-wide: in_proj (768x256), out_proj (256x256), linear1 (1024x256), linear2 (256x1024) per layer
    expected = {f"encoder.layers.{i}.{name}" for i in (0, 1) for name in (
        "self_attn.base_layer.in_proj_weight", "self_attn.base_layer.out_proj.base_layer.weight", "linear1.base_layer.weight", "linear2.weight")}
    assert set(report.names) == expected == set(stored_parameter_names(model))
    assert report.bytes_after * 2 == report.bytes_before
    assert report.bytes_saved == sum(model.get_parameter(n.replace(".weight", ".parametrizations.weight.original")
                                                         .replace("in_proj_weight", "parametrizations.in_proj_weight.original")).numel() * 2
                                     for n in expected)
    for name, param in model.named_parameters():
        if name.endswith(".original"):
            assert param.dtype == torch.bfloat16 and not param.requires_grad
        else:
            assert param.dtype == torch.float32, name  # biases, norms, the scale, LoRA factors
    assert {n: p for n, p in model.named_parameters() if p.requires_grad}.keys() == trainable_before.keys()
    assert model.encoder.layers[0].linear2.weight.dtype == torch.float32  # read back upcast
    assert "0.8" in report.summary() or "MiB saved" in report.summary()


def test_outputs_and_lora_gradients_equal_a_model_with_rounded_weights():
    """float32 compute on half-stored weights is exactly float32 compute on the rounded weights."""
    stored, reference = _lora_toy(), _lora_toy()
    store_frozen_weights(stored, torch.bfloat16)
    _round_frozen_through(reference, torch.bfloat16, 1 << 16)
    x = torch.randn(2, 50, 8)
    out_s, grads_s = _loss_and_grads(stored, x)
    out_r, grads_r = _loss_and_grads(reference, x)
    assert torch.equal(out_s, out_r)
    assert grads_s.keys() == grads_r.keys() and len(grads_s) == 12  # (A, B) x (qkv, out_proj, linear1) x 2 layers
    for name in grads_s:
        assert torch.equal(grads_s[name], grads_r[name]), name


def test_under_autocast_the_stored_model_computes_what_the_float32_model_computes():
    """Autocast rounds float32 weights to bfloat16 for its matmuls anyway: the same numbers come out."""
    stored, plain = _lora_toy(), _lora_toy()
    store_frozen_weights(stored, torch.bfloat16)
    x = torch.randn(2, 50, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_s, grads_s = _loss_and_grads(stored, x)
        out_p, grads_p = _loss_and_grads(plain, x)
    assert torch.equal(out_s, out_p)
    for name in grads_s:
        assert torch.equal(grads_s[name], grads_p[name]), name


def test_only_lora_factors_train_and_an_optimizer_step_moves_only_them():
    model = _lora_toy()
    store_frozen_weights(model, torch.float16)
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    _loss_and_grads(model, torch.randn(2, 20, 8))
    optimizer.step()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert torch.equal(param, frozen_before[name]), name
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_adapter_trained_on_stored_base_loads_into_the_float32_model(tmp_path):
    stored, plain = _lora_toy(), _lora_toy(seed=0)
    fingerprint = architecture_fingerprint(plain)
    store_frozen_weights(stored, torch.bfloat16)
    assert architecture_fingerprint(stored) == fingerprint  # names normalised, precision not part of it
    with torch.no_grad():
        for name, param in stored.named_parameters():
            if name.endswith("lora_A"):
                param.mul_(1.5)
    path = save_adapter(stored, tmp_path / "adapter.safetensors")
    load_adapter(plain, path)
    for name, value in lora_state_dict(stored).items():
        assert torch.equal(lora_state_dict(plain)[name], value), name


def test_merge_restores_float32_weights_and_keeps_the_outputs():
    model = _lora_toy()
    store_frozen_weights(model, torch.bfloat16)
    x = torch.randn(2, 30, 8)
    with torch.no_grad():
        before = model(x)
        merge_lora(model)
        after = model(x)
    assert stored_parameter_names(model) == ["encoder.layers.0.linear2.weight", "encoder.layers.1.linear2.weight"]
    assert model.encoder.layers[0].linear1.base_layer.weight.dtype == torch.float32
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()


def test_restore_gives_plain_float32_parameters_with_the_rounded_values():
    model = _lora_toy()
    reference = copy.deepcopy(model)
    _round_frozen_through(reference, torch.bfloat16, 1 << 16)
    store_frozen_weights(model, torch.bfloat16)
    assert restore_frozen_weights(model) == 8
    assert stored_parameter_names(model) == []
    assert model.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        assert model.state_dict()[name].dtype == value.dtype and torch.equal(model.state_dict()[name], value), name
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n and n != "scale")


def test_shared_and_small_parameters_stay_as_they_are():
    torch.manual_seed(0)
    first = nn.Linear(512, 512).requires_grad_(False)
    model = nn.Sequential(first, nn.ReLU(), first, nn.Linear(512, 256).requires_grad_(False))
    report = store_frozen_weights(model, torch.bfloat16)
    assert report.names == ["3.weight"]  # the shared layer is skipped; biases are small
    assert first.weight.dtype == torch.float32 and type(first) is nn.Linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8, torch.float64])
def test_other_storage_dtypes_are_refused(dtype):
    with pytest.raises(ValueError, match="bfloat16 or torch.float16"):
        store_frozen_weights(_lora_toy(), dtype)


def test_adapter_with_the_previous_fingerprint_still_loads(tmp_path):
    """Adapters written before precision left the fingerprint carry the old hash; they load into the same model."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sam3_lora_kit.lora.adapter import _fingerprint_v0

    source, target = _lora_toy(), _lora_toy(seed=1)
    path = save_adapter(source, tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={**metadata, "fingerprint": _fingerprint_v0(source)})
    assert _fingerprint_v0(source) != architecture_fingerprint(source)
    load_adapter(target, old)
    assert all(torch.equal(lora_state_dict(target)[k], v) for k, v in lora_state_dict(source).items())
    save_file(tensors, str(old), metadata={**metadata, "fingerprint": "0123456789abcdef"})
    with pytest.raises(Exception, match="another base architecture"):
        load_adapter(target, old)


def _saved_storage_bytes(model: nn.Module, x: torch.Tensor, keep_stored: bool) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
    """Bytes of the distinct storages autograd saves in one forward (parameters excluded), then the step's grads."""
    seen: dict[int, int] = {}

    def pack(tensor):
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with saving_stored_weights(model) if keep_stored else contextlib.nullcontext():
            out = model(x)
    out.square().sum().backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return sum(n for ptr, n in seen.items() if ptr not in params), out.detach(), grads


def test_saving_stored_weights_keeps_the_half_tensors_not_float32_copies_for_backward():
    """Every frozen layer here saves its weight for backward: without the context that is a
    float32 upcast per stored weight; with it, the stored parameter (no new bytes) instead."""
    model = _lora_toy()
    report = store_frozen_weights(model, torch.bfloat16)
    x = torch.randn(2, 50, 8)
    plain_bytes, out_plain, grads_plain = _saved_storage_bytes(model, x, keep_stored=False)
    kept_bytes, out_kept, grads_kept = _saved_storage_bytes(model, x, keep_stored=True)
    assert plain_bytes - kept_bytes == 2 * report.bytes_after  # each stored weight's float32 copy, once
    assert kept_bytes > 0  # the enclosing hooks still received every activation
    assert torch.equal(out_plain, out_kept)
    assert grads_plain.keys() == grads_kept.keys() and len(grads_kept) == 12
    for name in grads_plain:
        assert torch.equal(grads_plain[name], grads_kept[name]), name
    for module in model.modules():  # the context leaves no recorder behind
        assert getattr(module, "upcasts", None) is None


def test_saving_stored_weights_leaves_a_model_without_stored_weights_alone():
    model = _lora_toy()
    x = torch.randn(2, 50, 8)
    plain_bytes, out_plain, grads_plain = _saved_storage_bytes(model, x, keep_stored=False)
    kept_bytes, out_kept, grads_kept = _saved_storage_bytes(model, x, keep_stored=True)
    assert plain_bytes == kept_bytes > 0 and torch.equal(out_plain, out_kept)
    for name in grads_plain:
        assert torch.equal(grads_plain[name], grads_kept[name]), name


def test_a_layers_own_merge_on_stored_weights_keeps_the_outputs():
    """``layer.merge()`` (not only ``merge_lora``) lands the update in the weight itself, not in a temporary upcast."""
    model = _lora_toy()
    store_frozen_weights(model, torch.bfloat16)
    x = torch.randn(2, 30, 8)
    with torch.no_grad():
        before = model(x)
        for layer in (model.encoder.layers[0].linear1, model.encoder.layers[0].self_attn):
            layer.merge()
        after = model(x)
    assert model.encoder.layers[0].linear1.merged and model.encoder.layers[0].self_attn.merged
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
