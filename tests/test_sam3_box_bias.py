"""The decoder's box bias travels factored: same values, same gradients, no per-layer bias kept for backward."""
from __future__ import annotations

import copy
import inspect
import io

import pytest
import torch

from sam3_fixtures import CATEGORY_NAMES, make_sample
from sam3_lora_kit.sam3 import BatchBuilder, apply_lora, build_loss, build_sam3, training_step_loss
from sam3_lora_kit.sam3.box_bias import expand_box_bias, use_factored_box_bias


@pytest.fixture(scope="module")
def pair():
    """A tiny model as ``build_sam3`` makes it (factored) and the same model with sam3's own decoder classes."""
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer

    torch.manual_seed(0)
    factored = build_sam3("tiny", device="cpu")
    apply_lora(factored, "all-attn", rank=4, alpha=8)
    with torch.no_grad():  # a trained-looking adapter, so the LoRA gradients are not trivially zero
        for name, param in factored.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    original = copy.deepcopy(factored)
    original.transformer.decoder.__class__ = TransformerDecoder
    for layer in original.transformer.decoder.layers:
        layer.__class__ = TransformerDecoderLayer
    return factored, original


@pytest.fixture(scope="module")
def batch(pair):
    samples = [make_sample(1), make_sample(2, boxes=[(0, 0, 40, 50)], category_ids=[3])]
    return BatchBuilder(CATEGORY_NAMES, pair[0].image_size, negative_ratio=1.0, seed=0)(samples)


@pytest.mark.parametrize("height, width", [(8, 8), (6, 9)])
def test_factored_bias_expands_to_sam3s_bias_exactly(pair, height, width):
    from sam3.model.decoder import TransformerDecoder

    decoder = pair[0].transformer.decoder
    boxes = torch.rand(7, 2, 4) * 0.5 + 0.2  # (nq, bs, 4) cxcywh
    with torch.no_grad():
        sam3_bias = TransformerDecoder._get_rpb_matrix(decoder, boxes, (height, width)).flatten(0, 1)  # (bs*heads, nq, H*W)
        factored = decoder._get_rpb_matrix(boxes, (height, width)).flatten(0, 1)  # (bs*heads, nq, H+W)
    assert factored.shape[-1] == height + width
    assert torch.equal(expand_box_bias(factored, height, width), sam3_bias)


def test_expand_refuses_a_bias_of_the_wrong_width():
    with pytest.raises(ValueError, match="expected H \\+ W = 8 \\+ 8"):
        expand_box_bias(torch.zeros(2, 3, 64), 8, 8)


def test_build_swaps_the_decoder_and_keeps_its_state_dict(pair):
    factored, original = pair
    decoder = factored.transformer.decoder
    assert type(decoder).__name__ == "FactoredBoxBiasDecoder"
    assert {type(layer).__name__ for layer in decoder.layers} == {"FactoredBoxBiasDecoderLayer"}
    assert list(factored.state_dict()) == list(original.state_dict())
    assert use_factored_box_bias(original.transformer) == 1 and use_factored_box_bias(factored) == 0  # exact classes only
    original.transformer.decoder.__class__ = type(decoder).__mro__[1]  # back to sam3's class for the other tests
    for layer in original.transformer.decoder.layers:
        layer.__class__ = type(layer).__mro__[1]


def test_training_step_gives_sam3s_loss_and_gradients(pair, batch):
    loss_fn = build_loss("cpu")
    results = []
    for model in pair:
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the same dropout draws for both
        loss = training_step_loss(model, batch, loss_fn)["core_loss"]
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_f, grads_f), (loss_o, grads_o) = results
    assert torch.equal(loss_f, loss_o)
    assert grads_f.keys() == grads_o.keys() and any("transformer.decoder" in name for name in grads_f)
    for name in grads_f:
        torch.testing.assert_close(grads_f[name], grads_o[name], rtol=1e-5, atol=1e-7, msg=name)


def test_inference_outputs_are_unchanged(pair, batch):
    outputs = []
    for model in pair:
        model.eval()
        with torch.no_grad():
            outputs.append(model(batch)[-1])
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.equal(outputs[0][key], outputs[1][key]), key


def test_no_layer_keeps_a_full_bias_for_backward(pair, batch):
    """sam3's checkpointed layers keep each ``(bs * heads, nq, H * W)`` bias as an input; the factored ones do not."""
    loss_fn = build_loss("cpu")
    bias_shapes = []

    def record_bias(module, args, kwargs):  # checkpointed layers get their arguments positionally
        bias = inspect.signature(module.forward).bind(*args, **kwargs).arguments["cross_attn_mask"]
        bias_shapes.append(tuple(bias.shape))

    handle = pair[1].transformer.decoder.layers[0].register_forward_pre_hook(record_bias, with_kwargs=True)
    kept = {}
    for model, label in zip(pair, ("factored", "sam3")):
        model.train()
        shapes = []

        def pack(tensor):
            shapes.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            training_step_loss(model, batch, loss_fn)
        kept[label] = shapes
    handle.remove()
    (bias_shape,) = set(bias_shapes)  # (bs * heads, nq, H * W)
    layers = len(pair[1].transformer.decoder.layers)
    assert kept["sam3"].count(bias_shape) >= layers  # one per layer, kept as a checkpoint input
    assert bias_shape not in kept["factored"]
    factored_shape = (*bias_shape[:2], 2 * int(bias_shape[2] ** 0.5))  # square feature map: H + W
    assert factored_shape in kept["factored"]


def test_model_pickles_with_the_factored_classes(pair):
    buffer = io.BytesIO()
    torch.save(pair[0], buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert type(again.transformer.decoder).__name__ == "FactoredBoxBiasDecoder"
