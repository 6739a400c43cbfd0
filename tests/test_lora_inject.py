"""inject_lora, merging, and adapter files on small models."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sam3_lora_kit.lora import (
    AdapterError,
    LoRALinear,
    LoRAMultiheadAttention,
    inject_lora,
    iter_lora_layers,
    load_adapter,
    lora_state_dict,
    merge_lora,
    save_adapter,
    store_frozen_weights,
    unload_lora,
    unmerge_lora,
)


class ToyTransformer(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, layers: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, 8) -> (B, classes)
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _toy(seed: int = 0) -> ToyTransformer:
    torch.manual_seed(seed)
    return ToyTransformer()


def _randomise_b(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


TARGET_CASES = [
    # targets, expected wrapped names
    (["self_attn"], {"encoder.layers.0.self_attn", "encoder.layers.1.self_attn"}),
    (["linear1", "linear2"], {f"encoder.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)}),
    ([r"encoder\.layers\.0\..*"], {"encoder.layers.0.self_attn", "encoder.layers.0.linear1", "encoder.layers.0.linear2"}),
    (["encoder.layers.1.linear1"], {"encoder.layers.1.linear1"}),
    (["head"], {"head"}),
]


@pytest.mark.parametrize("targets,expected", TARGET_CASES)
def test_inject_matches_names_suffixes_and_regexes(targets, expected):
    model = _toy()
    report = inject_lora(model, targets, rank=4, alpha=8)
    assert {row["name"] for row in report.layers} == expected
    for name in expected:
        assert isinstance(model.get_submodule(name), (LoRALinear, LoRAMultiheadAttention))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert report.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.total == sum(p.numel() for p in model.parameters())
    assert 0 < report.percent < 100
    table = str(report)
    assert all(name in table for name in expected) and f"{report.trainable:,}" in table


def test_trainable_modules_stay_trainable():
    model = _toy()
    report = inject_lora(model, ["self_attn"], rank=2, alpha=2, trainable_modules=["head"])
    assert model.head.weight.requires_grad and model.head.bias.requires_grad
    assert not model.embed.weight.requires_grad
    assert report.trainable_modules == ["head"]


@pytest.mark.parametrize("bad,close", [("self_atn", "self_attn"), ("linaer1", "linear1"), ("encoder.layers.9.linear1", "encoder.layers.0.linear1")])
def test_unknown_target_lists_close_matches(bad, close):
    with pytest.raises(ValueError, match=f"matches no.*close matches:.*{close}"):
        inject_lora(_toy(), [bad], rank=2, alpha=2)


def test_gradients_reach_only_lora_parameters():
    model = _toy()
    inject_lora(model, ["self_attn", "linear1"], rank=4, alpha=8)
    _randomise_b(model)
    model(torch.randn(2, 5, 8)).sum().backward()
    for name, param in model.named_parameters():
        has_grad = param.grad is not None and param.grad.abs().sum() > 0
        assert has_grad == name.endswith(("lora_A", "lora_B")), name


@pytest.mark.parametrize("targets", [["self_attn"], ["self_attn", "linear1", "linear2", "head"]])
def test_merged_equals_unmerged_and_unmerge_restores(targets):
    model = _toy()
    base_state = copy.deepcopy(model.state_dict())
    inject_lora(model, targets, rank=4, alpha=8)
    _randomise_b(model)
    x = torch.randn(3, 6, 8)
    model.eval()
    with torch.no_grad():
        unmerged = model(x)
        merge_lora(model)
        merged = model(x)
        unmerge_lora(model)
        again = model(x)
    assert torch.allclose(merged, unmerged, atol=1e-5) and torch.allclose(again, unmerged, atol=1e-5)
    restored = {k.replace("base_layer.", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert restored.keys() == base_state.keys()
    for key, value in base_state.items():
        assert torch.allclose(restored[key], value, atol=1e-6), key


@pytest.mark.parametrize("store", [False, True])
def test_unload_gives_back_the_base_architecture_with_the_adapted_weights(store):
    model, reference = _toy(), _toy()
    inject_lora(model, ["self_attn", "linear1", "linear2", "head"], rank=4, alpha=8)
    _randomise_b(model)
    if store:
        store_frozen_weights(model, min_numel=1)
    x = torch.randn(3, 6, 8)
    model.eval()
    with torch.no_grad():
        adapted = model(x)
        unloaded = unload_lora(model)
        assert unloaded is model
        assert torch.allclose(unloaded(x), adapted, atol=1e-5)
    assert not list(iter_lora_layers(unloaded))
    assert {n: type(m) for n, m in unloaded.named_modules()} == {n: type(m) for n, m in reference.named_modules()}
    assert unloaded.state_dict().keys() == reference.state_dict().keys()
    assert all(p.dtype == torch.float32 for p in unloaded.parameters())
    tolerance = 1e-2 if store else 0.0  # stored in bf16: every frozen tensor is rounded, the adapted ones move further
    changed = [k for k, v in reference.state_dict().items()
               if not torch.allclose(unloaded.state_dict()[k], v, rtol=tolerance, atol=tolerance)]
    assert changed and all(k.endswith("weight") for k in changed)  # the adapters landed in the weights


class _OpRecorder(TorchDispatchMode):
    """Every ATen operator dispatched while active, with its tensor arguments' shapes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append((str(func), tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))))
        return func(*args, **(kwargs or {}))


def _dispatched_ops(module: nn.Module, x: torch.Tensor, training: bool) -> list[tuple[str, tuple]]:
    """The operators one forward (+ backward to ``x`` when training) of ``module`` dispatches."""
    module.train(training)
    x = x.detach().requires_grad_(training)
    with _OpRecorder() as recorder:
        if training:
            module(x).sum().backward()
        else:
            with torch.no_grad():
                module(x)
    return recorder.ops


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
def test_merged_and_unloaded_blocks_dispatch_exactly_the_base_blocks_operators(training):
    """The "merged costs nothing" claim, exactly rather than by timing: a merged LoRA block (wrappers
    in place) and an unloaded one run the same ATen operators on the same shapes, in the same order,
    as the block without LoRA, forward and backward; in inference that includes PyTorch's fused
    encoder-layer fast path. The unmerged block, as a check on the check, does not."""
    torch.manual_seed(0)
    base = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).requires_grad_(False)
    lora = copy.deepcopy(base)
    inject_lora(lora, ["self_attn", "linear1", "linear2"], rank=4, alpha=8)
    _randomise_b(lora)
    merged = merge_lora(copy.deepcopy(lora)).requires_grad_(False)
    unloaded = unload_lora(copy.deepcopy(lora)).requires_grad_(False)
    x = torch.randn(2, 10, 32)  # (N, L, E)
    expected = _dispatched_ops(base, x, training)
    assert expected  # inference: one fused operator (aten._transformer_encoder_layer_fwd) where the fast path applies
    assert _dispatched_ops(merged, x, training) == expected
    assert _dispatched_ops(unloaded, x, training) == expected
    assert _dispatched_ops(lora, x, training) != expected


def test_unload_of_a_lora_layer_returns_its_base():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 5), 2, 4)
    _randomise_b(layer)
    x = torch.randn(4, 8)
    with torch.no_grad():
        expected = layer(x)
        base = unload_lora(layer)
        assert type(base) is nn.Linear and torch.allclose(base(x), expected, atol=1e-6)


def test_zero_b_gives_identical_outputs():
    model, reference = _toy(), _toy()
    inject_lora(model, ["self_attn", "linear1", "head"], rank=4, alpha=8)
    x = torch.randn(2, 4, 8)
    assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("targets", [["self_attn"], ["linear1", "head"]])
def test_adapter_round_trip_into_fresh_model(tmp_path, targets):
    model = _toy()
    inject_lora(model, targets, rank=4, alpha=8)
    _randomise_b(model)
    path = save_adapter(model, tmp_path / "adapter.safetensors", preset="toy", steps=3)
    fresh = _toy()
    inject_lora(fresh, targets, rank=4, alpha=8)
    meta = load_adapter(fresh, path)
    assert meta["rank"] == 4 and meta["alpha"] == 8 and meta["user"] == {"preset": "toy", "steps": 3}
    assert set(meta["targets"]) == {row for row in dict(fresh.named_modules()) if isinstance(fresh.get_submodule(row), (LoRALinear, LoRAMultiheadAttention))}
    x = torch.randn(2, 5, 8)
    assert torch.equal(fresh(x), model(x))
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == set(lora_state_dict(model))
        assert handle.metadata()["kit_version"]


MISMATCH_CASES = [
    # injection of the model that receives the adapter, expected message fragment
    (dict(target_modules=["linear1"], rank=4, alpha=8), "has a LoRA layer at 'encoder.layers.0.self_attn' but the model has none"),
    (dict(target_modules=["self_attn"], rank=8, alpha=8), "differs in rank: adapter 4, model 8"),
    (dict(target_modules=["self_attn"], rank=4, alpha=16), "differs in alpha"),
    (dict(target_modules=["self_attn", "head"], rank=4, alpha=8), "model has a LoRA layer at 'head' that the adapter lacks"),
]


@pytest.mark.parametrize("injection,message", MISMATCH_CASES)
def test_mismatched_adapter_raises_naming_first_mismatch(tmp_path, injection, message):
    model = _toy()
    inject_lora(model, ["self_attn"], rank=4, alpha=8)
    path = save_adapter(model, tmp_path / "a.safetensors")
    other = _toy()
    inject_lora(other, **injection)
    before = copy.deepcopy(lora_state_dict(other))
    with pytest.raises(AdapterError, match=message):
        load_adapter(other, path)
    assert all(torch.equal(before[k], v) for k, v in lora_state_dict(other).items())  # nothing half-loaded


def test_adapter_for_another_architecture_raises(tmp_path):
    model = _toy()
    inject_lora(model, ["self_attn"], rank=4, alpha=8)
    path = save_adapter(model, tmp_path / "a.safetensors")
    torch.manual_seed(0)
    other = ToyTransformer(classes=5)  # same attention, other head
    inject_lora(other, ["self_attn"], rank=4, alpha=8)
    with pytest.raises(AdapterError, match="another base architecture"):
        load_adapter(other, path)
    load_adapter(other, path, strict=False)  # the attention adapters themselves fit


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_adapter_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(pickle.dumps(_Boom()))
    model = _toy()
    inject_lora(model, ["self_attn"], rank=4, alpha=8)
    with pytest.raises(AdapterError, match="not a safetensors adapter"):
        load_adapter(model, path)
    assert not (tmp_path / "PWNED").exists()


def test_save_is_atomic_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    model = _toy()
    inject_lora(model, ["self_attn"], rank=4, alpha=8)
    path = save_adapter(model, tmp_path / "a.safetensors")
    original = path.read_bytes()
    import sam3_lora_kit.lora.adapter as adapter_module

    def failing_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(adapter_module, "save_file", failing_save)
    _randomise_b(model)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_trainable_attention_keeps_its_in_projection_gradient():
    """``trainable_modules`` over an adapted attention: its packed in-projection trains like plain autograd's."""
    model = _toy()
    inject_lora(model, ["self_attn"], rank=2, alpha=4, trainable_modules=["encoder.layers.0"])
    _randomise_b(model)
    reference = copy.deepcopy(model)
    merge_lora(reference)  # the same function through PyTorch's own attention
    reference.requires_grad_(True)
    x = torch.randn(2, 5, 8)
    model(x).pow(2).sum().backward()
    reference(x).pow(2).sum().backward()
    attention = model.encoder.layers[0].self_attn.base_layer
    expected = reference.encoder.layers[0].self_attn.base_layer
    for name in ("in_proj_weight", "in_proj_bias"):
        grad = getattr(attention, name).grad
        assert grad is not None and grad.abs().sum() > 0, name
        assert torch.allclose(grad, getattr(expected, name).grad, atol=1e-5), name


def test_loading_into_a_merged_model_is_refused(tmp_path):
    model = _toy()
    inject_lora(model, ["linear1"], rank=2, alpha=4)
    _randomise_b(model)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    merge_lora(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterError, match="is merged .*unmerge_lora"):
        load_adapter(model, path)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    unmerge_lora(model)
    load_adapter(model, path)  # unmerged, it loads


@pytest.mark.parametrize("damage,message", [
    (lambda meta: meta.pop("rank"), "lacks 'rank'"),
    (lambda meta: meta.update(layers="{not json"), "'layers' is not valid JSON"),
    (lambda meta: meta.update(layers="[1, 2]"), "'layers' must map layer names"),
])
def test_damaged_adapter_metadata_is_an_adapter_error(tmp_path, damage, message):
    from safetensors.torch import load_file, save_file

    model = _toy()
    inject_lora(model, ["linear1"], rank=2, alpha=4)
    path = save_adapter(model, tmp_path / "adapter.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    damage(meta)
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(AdapterError, match=message):
        load_adapter(model, path)


@pytest.mark.parametrize("call", [
    lambda m: inject_lora(m, ["linear1", "linear2"], rank=2, alpha=4, layer_options={"linear2": {"out_splits": (2, 2)}}),
    lambda m: inject_lora(m, ["self_attn", "linear1"], rank=2, alpha=4, layer_options={"linear1": {"out_splits": (2, 2)}}),
    lambda m: inject_lora(m, ["linear1"], rank=0, alpha=4),
    lambda m: inject_lora(m, ["linear1"], rank=2, alpha=4, trainable_modules=["no_such_module"]),
])
def test_a_failed_injection_leaves_the_model_as_it_was(call):
    model = _toy()
    model.head.requires_grad_(False)  # a flag that is not the default, to see it kept
    modules_before = {name: type(module) for name, module in model.named_modules()}
    flags_before = {name: p.requires_grad for name, p in model.named_parameters()}
    x = torch.randn(2, 5, 8)
    out_before = model(x)
    with pytest.raises(ValueError):
        call(model)
    assert {name: type(module) for name, module in model.named_modules()} == modules_before
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags_before
    assert torch.equal(model(x), out_before)


def test_a_second_injection_never_wraps_a_wrapper():
    model = _toy()
    inject_lora(model, ["linear1"], rank=2, alpha=4)
    report = inject_lora(model, [r"encoder\.layers\.0\..*"], rank=2, alpha=4)  # would also match linear1.base_layer
    assert {row["name"] for row in report.layers} == {"encoder.layers.0.self_attn", "encoder.layers.0.linear2"}
    assert not any(isinstance(m, LoRALinear) for n, m in model.named_modules() if n.endswith("base_layer"))
    with pytest.raises(ValueError, match="already carry LoRA"):
        inject_lora(model, ["linear1"], rank=2, alpha=4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_diverged_adapter_is_neither_saved_nor_loaded(tmp_path, bad):
    model = _toy()
    inject_lora(model, ["self_attn", "head"], rank=4, alpha=8)
    _randomise_b(model)
    good = save_adapter(model, tmp_path / "good.safetensors")
    before = good.read_bytes()
    with torch.no_grad():
        model.head.lora_B[0, 1] = bad
    with pytest.raises(AdapterError, match=r"good.safetensors: LoRA tensor 'head.lora_B' holds NaN or infinite values.*nothing written"):
        save_adapter(model, good)
    assert good.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["good.safetensors"]
    tensors = {name: t.detach().clone() for name, t in lora_state_dict(model).items()}
    from safetensors.torch import save_file
    save_file(tensors, tmp_path / "hand.safetensors", metadata=dict(safe_open(str(good), framework="pt").metadata()))
    fresh = _toy()
    inject_lora(fresh, ["self_attn", "head"], rank=4, alpha=8)
    untouched = copy.deepcopy(lora_state_dict(fresh))
    with pytest.raises(AdapterError, match="hand.safetensors: LoRA tensor 'head.lora_B' holds NaN.*the model is unchanged"):
        load_adapter(fresh, tmp_path / "hand.safetensors")
    assert all(torch.equal(untouched[k], v) for k, v in lora_state_dict(fresh).items())


@pytest.mark.parametrize("rank,expected", [(8.0, 8), (3, 3)])
def test_a_whole_float_rank_is_that_integer(rank, expected):
    layer = LoRALinear(nn.Linear(16, 12), rank=rank, alpha=16)
    assert layer.rank == expected and layer.lora_A.shape == (expected, 16) and layer.scaling == 16 / expected


@pytest.mark.parametrize("rank", [0, -2, 2.5, True, "8", None])
def test_a_rank_that_is_not_a_positive_integer_is_refused(rank):
    with pytest.raises(ValueError, match="LoRA rank must be a positive integer"):
        LoRALinear(nn.Linear(16, 12), rank=rank, alpha=16)
