"""The toy transformer and task of notebooks 01-02, and the LoRA figures."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sam3_lora_kit import inject_lora
from sam3_lora_kit.toy import ToyTransformer, toy_accuracy, toy_batch, train_toy
from sam3_lora_kit.viz import lora_plots


@pytest.mark.parametrize("shift", [1, -1, 2])
def test_toy_batch_targets_are_shifted_tokens(shift):
    tokens, targets = toy_batch(4, 10, 7, shift, torch.Generator().manual_seed(0))
    assert tokens.shape == targets.shape == (4, 10) and tokens.dtype == torch.int64
    assert int(tokens.max()) < 7
    for t in range(10):
        assert torch.equal(targets[:, t], tokens[:, (t - shift) % 10])


def test_toy_batch_is_reproducible():
    first = toy_batch(3, 8, 5, 1, torch.Generator().manual_seed(3))
    second = toy_batch(3, 8, 5, 1, torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("norm_first", [False, True])
def test_toy_transformer_shapes_and_attention_module(norm_first):
    model = ToyTransformer(vocab_size=11, seq_len=6, dim=16, num_heads=2, num_layers=1, norm_first=norm_first)
    logits = model(torch.randint(11, (3, 6)))
    assert logits.shape == (3, 6, 11)
    assert isinstance(model.encoder.layers[0].self_attn, torch.nn.MultiheadAttention)
    assert model.encoder.layers[0].self_attn.in_proj_weight.shape == (48, 16)


def test_train_toy_learns_task_and_is_reproducible():
    torch.manual_seed(0)
    model = ToyTransformer(seq_len=8)
    twin = copy.deepcopy(model)
    losses = train_toy(model, shift=1, steps=40, lr=1e-2, batch_size=16, seed=0)
    assert len(losses) == 40 and np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert train_toy(twin, shift=1, steps=40, lr=1e-2, batch_size=16, seed=0) == losses
    assert toy_accuracy(model, 1) > toy_accuracy(model, -1)
    assert model.training  # toy_accuracy restores the mode


def test_train_toy_trains_only_lora_after_injection():
    torch.manual_seed(0)
    model = ToyTransformer(seq_len=8)
    inject_lora(model, ["self_attn", "linear1"], rank=2, alpha=4)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_toy(model, shift=-1, steps=3, lr=1e-2, batch_size=8)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_B"))


def test_train_toy_refuses_a_frozen_model():
    model = ToyTransformer(seq_len=4).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        train_toy(model, shift=1, steps=1, lr=1e-3)


@pytest.mark.parametrize("values,expected", [([3.0, 4.0], [9 / 25, 1.0]), ([1.0, 1.0, 1.0, 1.0], [0.25, 0.5, 0.75, 1.0])])
def test_energy_fraction(values, expected):
    assert np.allclose(lora_plots.energy_fraction(torch.tensor(values)), expected)


@pytest.mark.parametrize("draw,lines", [
    (lambda: lora_plots.plot_params_vs_rank([1, 2, 4], [10, 20, 40], 100), 2),
    (lambda: lora_plots.plot_spectra({"dW": [3.0, 1.0], "random": [2.0, 2.0]}, rank=1), 3),
    (lambda: lora_plots.plot_scaling_conventions([1, 2, 4], {"a": [1, 2, 3], "b": [3, 2, 1]}), 2),
    (lambda: lora_plots.plot_loss_curves({"run": list(np.linspace(2, 0.1, 30))}, smooth=5), 1),
])
def test_figures_draw_one_line_per_series(draw, lines):
    fig = draw()
    (ax,) = fig.axes
    assert len(ax.get_lines()) == lines
    assert ax.get_legend() is not None
