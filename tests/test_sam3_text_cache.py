"""The text cache: SAM 3's frozen text encoder replaced by the features of the category names."""
from __future__ import annotations

import pytest
import torch

from sam3_lora_kit.sam3 import apply_lora, build_loss, build_sam3, training_step_loss
from sam3_lora_kit.sam3.text_cache import (CachedTextEncoder, cache_text_features, frozen_text_encoder,
                                           restore_text_encoder)

IMAGE_SIZE = 112


@pytest.fixture()
def tiny_lora():
    torch.manual_seed(0)
    model = build_sam3("tiny", device="cpu", image_size=IMAGE_SIZE)
    apply_lora(model, preset="all-attn", rank=4, alpha=8.0)
    return model


def test_cached_features_equal_the_encoders_row_for_row(tiny_lora):
    encoder = tiny_lora.backbone.language_backbone
    with torch.no_grad():
        live_mask, live_memory, live_embeds = encoder(["a red square", "circle", "circle"], None, device="cpu")
    taken = cache_text_features(tiny_lora, ["triangle", "circle", "a red square", "circle"])
    cache = tiny_lora.backbone.language_backbone
    assert taken is encoder and isinstance(cache, CachedTextEncoder)
    assert cache.phrases == ["triangle", "circle", "a red square"]  # duplicates once, order kept
    mask, memory, embeds = cache(["a red square", "circle", "circle"], None, device="cpu")
    # (B, L) padding mask; (L, B, d) memory; (L, B, width) token embeddings, as VETextEncoder returns them
    assert mask.shape == live_mask.shape and memory.shape == live_memory.shape and embeds.shape == live_embeds.shape
    assert torch.equal(mask, live_mask) and torch.equal(embeds, live_embeds)
    torch.testing.assert_close(memory, live_memory, rtol=1e-5, atol=1e-6)
    assert not any(True for _ in cache.parameters()) and cache.state_dict() == {}  # nothing to save or train


def test_an_uncached_phrase_is_a_clear_error(tiny_lora):
    cache_text_features(tiny_lora, ["circle", "square"])
    with pytest.raises(KeyError, match=r"'hexagon' was not among the 2 phrases .*'circle', 'square'.*text_cache: false"):
        tiny_lora.backbone.language_backbone(["circle", "hexagon"])


def test_a_training_step_with_the_cache_matches_the_encoder(tiny_lora):
    from benchmarks.train_step import sample_batch

    batch = sample_batch(2, IMAGE_SIZE)
    loss_fn = build_loss(torch.device("cpu"))
    tiny_lora.train()

    def step() -> tuple[float, dict[str, torch.Tensor]]:
        tiny_lora.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss = training_step_loss(tiny_lora, batch, loss_fn)["core_loss"]
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in tiny_lora.named_parameters() if p.requires_grad}

    live_loss, live_grads = step()
    encoder = cache_text_features(tiny_lora, ["unused phrase", *batch.find_text_batch])
    cached_loss, cached_grads = step()
    assert cached_loss == pytest.approx(live_loss, rel=1e-6)
    assert live_grads.keys() == cached_grads.keys()
    for name, grad in live_grads.items():  # the same up to float rounding (the features come from a batch of other size)
        assert (cached_grads[name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name
    restore_text_encoder(tiny_lora, encoder)
    assert tiny_lora.backbone.language_backbone is encoder


def test_a_text_encoder_that_trains_is_not_cached(tiny_lora):
    assert frozen_text_encoder(tiny_lora) is tiny_lora.backbone.language_backbone
    tiny_lora.backbone.language_backbone.resizer.weight.requires_grad_(True)
    assert frozen_text_encoder(tiny_lora) is None
    before = tiny_lora.backbone.language_backbone
    assert cache_text_features(tiny_lora, ["circle"]) is None
    assert tiny_lora.backbone.language_backbone is before  # unchanged


def test_lora_inside_the_text_encoder_is_not_cached():
    torch.manual_seed(0)
    model = build_sam3("tiny", device="cpu", image_size=IMAGE_SIZE)
    apply_lora(model, preset=None, target_modules=[r"backbone\.language_backbone\.resizer"], rank=2, alpha=2.0)
    assert frozen_text_encoder(model) is None
    with pytest.raises(ValueError, match="nothing to restore"):
        restore_text_encoder(model, model.backbone.language_backbone)
