"""The tiny SAM 3 on CPU: builds, runs, trains with the official losses, loads checkpoints strictly."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sam3_fixtures import CATEGORY_NAMES, make_sample
from sam3_lora_kit.sam3 import (
    BatchBuilder,
    CheckpointError,
    apply_lora,
    bpe_path,
    build_loss,
    build_sam3,
    load_sam3_checkpoint,
    postprocess,
    training_step_loss,
)
from sam3_lora_kit.sam3 import compat


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return build_sam3("tiny", device="cpu")


@pytest.fixture()
def batch(tiny):
    samples = [make_sample(1), make_sample(2, boxes=[(0, 0, 40, 50)], category_ids=[3])]
    return BatchBuilder(CATEGORY_NAMES, tiny.image_size, negative_ratio=1.0, seed=0)(samples)


def test_package_import_stays_light() -> None:
    code = "import sys, sam3_lora_kit, sam3_lora_kit.sam3; print('sam3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bpe_vocabulary_comes_from_installed_package() -> None:
    path = Path(bpe_path())
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.stat().st_size > 1_000_000


def test_tiny_is_sam3_image_with_initialised_text_encoder(tiny) -> None:
    from sam3.model.sam3_image import Sam3Image

    assert isinstance(tiny, Sam3Image) and tiny.matcher is not None and not tiny.training
    encoder = tiny.backbone.language_backbone.encoder
    for tensor in (encoder.positional_embedding, encoder.text_projection):
        assert torch.isfinite(tensor).all() and tensor.abs().max() < 1.0  # torch.empty would hold garbage


def test_tiny_forward_on_cpu(tiny, batch) -> None:
    with torch.no_grad():
        results = postprocess(tiny(batch), batch, max_detections=5)
    queries = len(batch.find_inputs[0].img_ids)
    assert len(results) == queries
    first = results[0]
    assert first["masks"].shape == (5, 150, 120) and first["masks"].dtype == torch.bool
    assert first["boxes"].shape == (5, 4) and first["scores"].shape == (5,)
    assert torch.isfinite(first["scores"]).all() and (first["scores"] <= 1).all()
    assert (first["boxes"][:, 2] <= 120).all() and (first["boxes"][:, 3] <= 150).all()
    assert first["scores"].tolist() == sorted(first["scores"].tolist(), reverse=True)
    assert {r["category_id"] for r in results} <= {1, 2, 3, 4} and {r["image_id"] for r in results} == {1, 2}


def test_box_prompt_pooling_runs_on_cpu(tiny, batch) -> None:
    """Box ROI pooling pins memory in sam3; the kit's geometry encoder runs it without a GPU."""
    stage = batch.find_inputs[0]
    queries = len(stage.img_ids)
    stage.input_boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(1, queries, 1)  # (1, Q, 4) cxcywh
    stage.input_boxes_mask = torch.zeros(queries, 1, dtype=torch.bool)
    stage.input_boxes_label = torch.ones(1, queries, dtype=torch.long)
    with torch.no_grad():
        out = tiny(batch)[-1]
    assert torch.isfinite(out["pred_logits"]).all()


@pytest.mark.parametrize("preset, qkv", [("all-attn", "fused"), ("vision-attn", "split")])
def test_tiny_lora_training_lowers_the_official_loss(tiny, batch, preset: str, qkv: str) -> None:
    apply_lora(tiny, preset, rank=4, alpha=8, qkv=qkv)
    loss_fn = build_loss("cpu")
    tiny.train()
    params = [p for p in tiny.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    losses = []
    for _ in range(4):
        terms = training_step_loss(tiny, batch, loss_fn)
        terms["core_loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(terms["core_loss"].item())
    assert {"loss_ce", "presence_loss", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"} <= set(terms)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name, target", compat.PATCHES)
def test_every_compat_patch_is_undone(name: str, target: str) -> None:
    import importlib

    module_name, attribute = target.rsplit(".", 1)
    try:
        owner = importlib.import_module(module_name)
    except ModuleNotFoundError:  # a class attribute: module.Class.attr
        module_name, cls = module_name.rsplit(".", 1)
        owner = getattr(importlib.import_module(module_name), cls)
    before = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
    patch = getattr(compat, name)
    context = patch(torch.device("cpu")) if name in ("position_encoding_on", "decoder_coords_on") else patch()
    with pytest.raises(KeyError):
        with context:
            during = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
            assert during is not before
            raise KeyError("leave the block by an error")
    after = owner.__dict__[attribute] if isinstance(owner, type) else getattr(owner, attribute)
    assert after is before


def test_focal_loss_patch_matches_triton_free_reference() -> None:
    from sam3.train.loss import loss_fns

    logits, targets = torch.randn(4, 10), (torch.rand(4, 10) > 0.5).float()
    with compat.torch_focal_loss():
        patched = loss_fns.sigmoid_focal_loss(logits, targets, 2.0)
    reference = loss_fns.sigmoid_focal_loss(logits, targets, 2.0, triton=False)
    assert torch.equal(patched, reference)


def official_layout(state: dict[str, torch.Tensor]) -> dict:
    """A state dict laid out as facebook/sam3's sam3.pt: the image model under ``detector.``, plus tracker weights."""
    model = {f"detector.{key}": value for key, value in state.items()}
    model["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)
    return {"model": model}


def test_tiny_checkpoint_round_trip_in_official_layout(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_sam3("tiny")
    path = tmp_path / "sam3.pt"
    torch.save(official_layout(source.state_dict()), path)
    torch.manual_seed(2)
    target = build_sam3("tiny", checkpoint=path)
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("drop", ["transformer.decoder.query_embed.weight", "backbone.language_backbone.encoder.positional_embedding"])
def test_checkpoint_missing_a_key_fails_naming_it(tiny, drop: str) -> None:
    state = official_layout(tiny.state_dict())
    del state["model"][f"detector.{drop}"]
    with pytest.raises(CheckpointError, match=drop.replace(".", r"\.")):
        load_sam3_checkpoint(tiny, state)


def test_checkpoint_with_wrong_shape_fails_and_unexpected_keys_are_reported(tiny) -> None:
    state = dict(tiny.state_dict())
    state["extra.weight"] = torch.zeros(1)
    report = load_sam3_checkpoint(tiny, state)
    assert report.missing == [] and report.unexpected == ["extra.weight"]
    state["transformer.decoder.query_embed.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="wrong shapes: transformer.decoder.query_embed.weight"):
        load_sam3_checkpoint(tiny, state)


def test_missing_checkpoint_file_is_named(tiny, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere.pt: checkpoint file not found"):
        load_sam3_checkpoint(tiny, tmp_path / "nowhere.pt")


@pytest.mark.parametrize("kwargs, message", [({"size": "huge"}, "size must be"), ({"image_size": 100}, "multiple of the patch")])
def test_bad_build_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_sam3(**{"size": "tiny", **kwargs})


def test_rope_tables_rebuilt_for_another_image_size(tiny) -> None:
    """The full build at image_size != 1008 rebuilds the global blocks' RoPE tables; same function on tiny."""
    from sam3_lora_kit.sam3.build import _resize_rope

    trunk = tiny.backbone.vision_backbone.trunk
    _resize_rope(trunk, 2 * tiny.image_size)
    tokens = 2 * tiny.image_size // 14
    assert trunk.blocks[-1].attn.freqs_cis.shape[0] == tokens * tokens
    with torch.no_grad():
        features = trunk(torch.zeros(1, 3, 2 * tiny.image_size, 2 * tiny.image_size))
    assert features[-1].shape[-2:] == (tokens, tokens)


def test_tiny_model_pickles_and_copies(tiny) -> None:
    import copy
    import io

    buffer = io.BytesIO()
    torch.save(tiny, buffer)
    assert type(copy.deepcopy(tiny).geometry_encoder).__name__ == "CpuSafeGeometryEncoder"
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert torch.equal(again.transformer.decoder.query_embed.weight, tiny.transformer.decoder.query_embed.weight)


def test_text_encoder_attention_is_pinned_to_sam3s_kernels(tiny) -> None:
    """sam3 runs its text encoder under ``sdpa_kernel(MATH, EFFICIENT, FLASH)`` but only in the
    forward; the kit pins those kernels on the encoder's attention modules so checkpoint
    recomputation in backward picks the same kernel (on CUDA it would otherwise pick cuDNN)."""
    from sam3_lora_kit.sam3.build import TEXT_ENCODER_SDPA_BACKENDS, pin_text_encoder_kernels

    pinned = {name for name, module in tiny.named_modules() if getattr(module, "sdpa_backends", None)}
    text = {name for name, module in tiny.backbone.language_backbone.named_modules(prefix="backbone.language_backbone")
            if type(module).__name__ == "EfficientMultiheadAttention"}
    assert text and pinned == text
    assert all(getattr(tiny.get_submodule(name), "sdpa_backends") == TEXT_ENCODER_SDPA_BACKENDS for name in pinned)
    assert pin_text_encoder_kernels(torch.nn.Linear(2, 2)) == 0


@pytest.mark.parametrize("qkv", ["fused", "split"])
def test_unloaded_lora_model_saves_as_an_official_checkpoint(tiny, batch, tmp_path: Path, qkv: str) -> None:
    """Merge-and-unload, save in the official layout, build from it: the same predictions as the adapted model."""
    from sam3_lora_kit.lora import iter_lora_layers, unload_lora

    base = copy.deepcopy(tiny)
    apply_lora(tiny, "all-attn", rank=4, alpha=8, qkv=qkv)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in tiny.named_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
        adapted = tiny(batch)[-1]["pred_logits"]
        unloaded = unload_lora(tiny)
    assert not list(iter_lora_layers(unloaded))
    path = tmp_path / "sam3_merged.pt"
    torch.save(official_layout(unloaded.state_dict()), path)
    rebuilt = build_sam3("tiny", checkpoint=path)  # strict: every key of the plain architecture, nothing else
    with torch.no_grad():
        reloaded = rebuilt(batch)[-1]["pred_logits"]
    assert torch.allclose(reloaded, adapted, atol=1e-4)
    with torch.no_grad():
        plain = base(batch)[-1]["pred_logits"]  # the same base without the adapter
    assert (plain - adapted).abs().max() > 1e-3  # the adapter changed the predictions, so the check above means something
