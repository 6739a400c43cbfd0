"""The full-size SAM 3 (840 M parameters), built once for this module on the CPU: presets and the official checkpoint layout.

Slow (the build alone takes 10-80 s on a shared 2-core machine, about 4 GB of RAM, and the checkpoint
file is 3.4 GB), but it runs in CI: it is the only check that the presets and the loader fit the
real architecture. Nothing here runs the full model forward.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sam3_lora_kit.lora import iter_lora_layers
from sam3_lora_kit.sam3 import LORA_PRESETS, CheckpointError, apply_lora, build_sam3, load_sam3_checkpoint

pytestmark = pytest.mark.slow

FULL_PARAMS = 840_509_750  # measured: vision 454.0 M, text 353.7 M, the rest 32.7 M


@pytest.fixture(scope="module")
def full():
    torch.manual_seed(0)
    model = build_sam3("full", device="cpu")
    yield model
    del model


def remove_lora(model: torch.nn.Module) -> None:
    """Put every wrapped module back (innermost first: an attention wrapper holds a LoRA out_proj)."""
    for name, layer in reversed(list(iter_lora_layers(model))):
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.base_layer)


def test_full_size_is_the_official_architecture(full) -> None:
    assert sum(p.numel() for p in full.parameters()) == FULL_PARAMS
    assert len(full.backbone.vision_backbone.trunk.blocks) == 32
    assert full.transformer.decoder.num_queries == 200


@pytest.mark.parametrize("qkv", ["fused", "split"])
@pytest.mark.parametrize("preset", list(LORA_PRESETS))
def test_presets_match_real_module_names_on_full_size(full, preset: str, qkv: str) -> None:
    report = apply_lora(full, preset, rank=8, alpha=16, qkv=qkv)
    try:
        print(f"\n{preset} ({qkv} qkv): {len(report.layers)} layers, trainable {report.trainable:,} ({report.percent:.4f} %)")
        names = [row["name"] for row in report.layers]
        vit = [n for n in names if n.startswith("backbone.vision_backbone.trunk.")]
        assert not any(n.startswith("backbone.language_backbone.") for n in names)  # text encoder frozen
        if preset in ("vision-attn", "all-attn"):
            assert len(vit) == 64  # qkv + proj in 32 blocks
        if preset == "vision-all":
            assert len(vit) == 128
        if preset in ("detector-attn", "all-attn"):
            assert len(names) - len(vit) == 37  # encoder 12, decoder 18, geometry 6, segmentation head 1
        trainable = {n for n, p in full.named_parameters() if p.requires_grad}
        assert trainable and all(n.rsplit(".", 1)[-1] in ("lora_A", "lora_B") for n in trainable)
        assert 0 < report.percent < 1
    finally:
        remove_lora(full)


def test_official_checkpoint_layout_round_trip(full, tmp_path: Path) -> None:
    state = {f"detector.{key}": value for key, value in full.state_dict().items()}
    state["tracker.maskmem_tpos_enc"] = torch.zeros(7, 1, 1, 64)  # sam3.pt also holds the video tracker
    path = tmp_path / "sam3.pt"
    torch.save({"model": state}, path)
    probe = full.transformer.decoder.query_embed.weight
    expected = probe.detach().clone()
    with torch.no_grad():
        probe.zero_()
    report = load_sam3_checkpoint(full, path)
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len(full.state_dict())
    assert torch.equal(full.transformer.decoder.query_embed.weight, expected)


def test_full_checkpoint_missing_a_key_fails_naming_it(full) -> None:
    state = {f"detector.{key}": value for key, value in full.state_dict().items()}
    del state["detector.backbone.vision_backbone.trunk.blocks.31.attn.qkv.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing keys: backbone\.vision_backbone\.trunk\.blocks\.31\.attn\.qkv\.weight"):
        load_sam3_checkpoint(full, state)
