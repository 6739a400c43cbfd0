"""Building SAM 3 image models on any device: the official ``full`` size and a ``tiny`` one for CPU.

Both are ``sam3.model.sam3_image.Sam3Image`` made of ``sam3``'s own classes and carry the
official Hungarian matcher, so they can train (the model matches inside its forward). ``tiny``
keeps every component of ``full`` (ViT with RoPE and windowed attention, text transformer,
fusion encoder, decoder with presence token and box-RPB, geometry encoder, segmentation head)
at dimensions small enough to train a step on a CPU in well under a second.

Checkpoints in the official layout (keys under ``detector.``, as in ``facebook/sam3``'s
``sam3.pt``) load through ``load_sam3_checkpoint``, which fails unless every model key is found.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from sam3_lora_kit.lora.attention import EfficientMultiheadAttention, use_efficient_attention
from sam3_lora_kit.runtime import pick_device
from sam3_lora_kit.sam3 import compat
from sam3_lora_kit.sam3.box_bias import use_factored_box_bias

__all__ = ["CheckpointError", "LoadReport", "TINY", "bpe_path", "build_sam3", "load_sam3_checkpoint"]

FULL_IMAGE_SIZE = 1008  # the official resolution (patch 14 -> 72 x 72 tokens)
HF_REPO_ID = "facebook/sam3"
HF_FILENAME = "sam3.pt"


@dataclass(frozen=True)
class TinyDims:
    """Dimensions of the ``tiny`` model (the ``full`` ones in comments)."""

    image_size: int = 112  # 1008 (8 x 8 tokens: a step trains in well under a second on a CPU)
    patch_size: int = 14  # 14
    vit_dim: int = 64  # 1024
    vit_depth: int = 2  # 32
    vit_heads: int = 4  # 16
    vit_window: int = 4  # 24 (the last block attends globally, as blocks 7, 15, 23, 31 do)
    d_model: int = 64  # 256 (encoder, decoder, heads)
    heads: int = 4  # 8
    ffn_dim: int = 128  # 2048
    encoder_layers: int = 1  # 6
    decoder_layers: int = 2  # 6
    num_queries: int = 16  # 200
    geometry_layers: int = 1  # 3
    text_width: int = 64  # 1024
    text_heads: int = 4  # 16
    text_layers: int = 1  # 24
    context_length: int = 16  # 32


TINY = TinyDims()


class CheckpointError(RuntimeError):
    """A checkpoint that does not fit the model (missing keys, wrong shapes, unreadable file)."""


@dataclass
class LoadReport:
    """What ``load_sam3_checkpoint`` found: loaded, missing and unexpected keys."""

    source: str
    loaded: int
    missing: list[str]
    unexpected: list[str]
    recomputed: list[str]  # RoPE tables rebuilt for another image size, not taken from the file

    def __str__(self) -> str:
        return (
            f"{self.source}: loaded {self.loaded} tensors, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.recomputed)} RoPE tables recomputed"
        )


def bpe_path() -> str:
    """The BPE vocabulary ``sam3`` needs but does not ship, taken from the installed ``open_clip``."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package open_clip_torch is not installed: it provides bpe_simple_vocab_16e6.txt.gz")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BPE vocabulary missing from the installed open_clip package")
    return str(path)


def _init_text_encoder(model: nn.Module) -> None:
    """Initialise the text encoder's ``torch.empty`` tensors (sam3 assumes a checkpoint), as open_clip does."""
    encoder = model.backbone.language_backbone.encoder
    nn.init.normal_(encoder.positional_embedding, std=0.01)
    if isinstance(encoder.text_projection, nn.Parameter):
        nn.init.normal_(encoder.text_projection, std=encoder.width**-0.5)


def _build_full(device: torch.device, image_size: int) -> nn.Module:
    """The official architecture, from ``sam3.model_builder``'s own factory functions."""
    from sam3 import model_builder
    from sam3.model.vitdet import ViT

    with compat.position_encoding_on(device), compat.decoder_coords_on(device):
        model = model_builder.build_sam3_image_model(
            bpe_path=bpe_path(), device="cpu", eval_mode=False, checkpoint_path=None, load_from_HF=False
        )
    if image_size != FULL_IMAGE_SIZE:
        trunk: ViT = model.backbone.vision_backbone.trunk
        _resize_rope(trunk, image_size)
    return model


def _resize_rope(trunk: nn.Module, image_size: int) -> None:
    """Rebuild the ViT's RoPE tables for ``image_size`` (they are fixed at build time to ``img_size // patch``)."""
    patch = trunk.patch_embed.proj.kernel_size[0]
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    tokens = image_size // patch
    for block in trunk.blocks:
        attn = block.attn
        if block.window_size == 0 and attn.use_rope:  # global blocks see the whole image
            attn.input_size = (tokens, tokens)
            del attn.freqs_cis
            attn._setup_rope_freqs()


def _build_tiny(image_size: int) -> nn.Module:
    """The same classes as ``full`` with ``TINY``'s dimensions."""
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, MultiheadAttentionWrapper, TransformerWrapper
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone
    from sam3.train.matcher import BinaryHungarianMatcherV2

    t = TINY
    if image_size % t.patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {t.patch_size}")
    d = t.d_model

    def pos_enc() -> PositionEmbeddingSine:
        return PositionEmbeddingSine(num_pos_feats=d, normalize=True, scale=None, temperature=10000)

    def mha(batch_first: bool | None = None, dropout: float = 0.0) -> MultiheadAttentionWrapper:
        kwargs = {} if batch_first is None else {"batch_first": batch_first}
        return MultiheadAttentionWrapper(num_heads=t.heads, dropout=dropout, embed_dim=d, **kwargs)

    def encoder_layer(batch_first: bool, geometry: bool) -> TransformerEncoderLayer:
        return TransformerEncoderLayer(
            activation="relu", d_model=d, dim_feedforward=t.ffn_dim, dropout=0.0,
            pos_enc_at_attn=not geometry, pos_enc_at_cross_attn_keys=geometry,
            pos_enc_at_cross_attn_queries=False, pre_norm=True,
            self_attention=mha(batch_first), cross_attention=mha(batch_first),
        )

    trunk = ViT(
        img_size=image_size, pretrain_img_size=image_size // 2, patch_size=t.patch_size,
        embed_dim=t.vit_dim, depth=t.vit_depth, num_heads=t.vit_heads, mlp_ratio=4.0,
        norm_layer="LayerNorm", drop_path_rate=0.0, qkv_bias=True, use_abs_pos=True, tile_abs_pos=True,
        global_att_blocks=(t.vit_depth - 1,), rel_pos_blocks=(), use_rope=True, use_interp_rope=True,
        window_size=t.vit_window, pretrain_use_cls_token=True, retain_cls_token=False, ln_pre=True,
        ln_post=False, return_interm_layers=False, bias_patch_embed=False,
    )
    neck = Sam3DualViTDetNeck(position_encoding=pos_enc(), d_model=d, scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=trunk)
    text = VETextEncoder(
        tokenizer=SimpleTokenizer(bpe_path=bpe_path()), d_model=d, width=t.text_width,
        heads=t.text_heads, layers=t.text_layers, context_length=t.context_length,
    )
    backbone = SAM3VLBackbone(visual=neck, text=text, scalp=1)

    encoder = TransformerEncoderFusion(
        layer=encoder_layer(batch_first=True, geometry=False), num_layers=t.encoder_layers, d_model=d,
        num_feature_levels=1, frozen=False, use_act_checkpoint=True,
        add_pooled_text_to_img_feat=False, pool_text_with_mask=True,
    )
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(
            activation="relu", d_model=d, dim_feedforward=t.ffn_dim, dropout=0.0,
            cross_attention=mha(), n_heads=t.heads, use_text_cross_attention=True,
        ),
        num_layers=t.decoder_layers, num_queries=t.num_queries, return_intermediate=True, box_refine=True,
        num_o2m_queries=0, dac=True, boxRPB="log", d_model=d, frozen=False, interaction_layer=None,
        dac_use_selfatt_ln=True, resolution=None, stride=None,  # no precompute: it would allocate on "cuda"
        use_act_checkpoint=True, presence_token=True,
    )
    transformer = TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d)
    scoring = DotProductScoring(
        d_model=d, d_proj=d,
        prompt_mlp=MLP(input_dim=d, hidden_dim=t.ffn_dim, output_dim=d, num_layers=2, dropout=0.0,
                       residual=True, out_norm=nn.LayerNorm(d)),
    )
    segmentation_head = UniversalSegmentationHead(
        hidden_dim=d, upsampling_stages=3, aux_masks=False, presence_head=False, dot_product_scorer=None,
        act_ckpt=True, cross_attend_prompt=mha(dropout=0.0),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d),
    )
    geometry = SequenceGeometryEncoder(
        pos_enc=pos_enc(), encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=d,
        num_layers=t.geometry_layers, layer=encoder_layer(batch_first=False, geometry=True),
        use_act_ckpt=True, add_cls=True, add_post_encode_proj=True,
    )
    matcher = BinaryHungarianMatcherV2(focal=True, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, alpha=0.25, gamma=2, stable=False)
    return Sam3Image(
        backbone=backbone, transformer=transformer, input_geometry_encoder=geometry,
        segmentation_head=segmentation_head, num_feature_levels=1, o2m_mask_predict=True,
        dot_prod_scoring=scoring, use_instance_query=False, multimask_output=True,
        inst_interactive_predictor=None, matcher=matcher,
    )


# The SDPA kernels sam3's text encoder runs with: ``VETextEncoder``'s caller enters
# ``sdpa_kernel`` with these (vl_combiner.py:148), but only around the forward.
TEXT_ENCODER_SDPA_BACKENDS = ("MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION")  # SDPBackend names


def pin_text_encoder_kernels(model: torch.nn.Module) -> int:
    """Give each attention module of the text encoder the kernels sam3 runs it with; returns how many.

    The text encoder checkpoints its blocks. Their recomputation in backward runs outside sam3's
    ``sdpa_kernel`` scope, so on CUDA it may pick another kernel (cuDNN attention) than the forward
    did, whose saved tensors differ, and ``torch.utils.checkpoint`` stops the step with a
    ``CheckpointError`` whenever the text encoder trains. Pinned on the module, forward and
    recomputation use the same kernels.
    """
    language = getattr(getattr(model, "backbone", None), "language_backbone", None)
    pinned = 0
    for module in language.modules() if language is not None else ():
        if isinstance(module, EfficientMultiheadAttention):
            module.sdpa_backends = TEXT_ENCODER_SDPA_BACKENDS
            pinned += 1
    return pinned


def build_sam3(
    size: str = "tiny",
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """Build a ``Sam3Image`` (``size`` ``"tiny"`` or ``"full"``) in eval mode on ``device``.

    ``checkpoint``: ``None`` (random weights), a path to an official-format file, a state dict,
    or ``"hf"`` to download ``facebook/sam3`` (needs accepted access on the Hugging Face Hub).
    ``image_size``: input side in pixels (default 1008 for full, 224 for tiny); a multiple of 14.
    Its ``nn.MultiheadAttention`` modules are ``EfficientMultiheadAttention`` and its decoder passes
    the box bias to each layer factored (``box_bias.py``); weights and state dict are sam3's.
    """
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")
    device = pick_device(device)
    image_size = image_size or (FULL_IMAGE_SIZE if size == "full" else TINY.image_size)
    if size == "full":
        model = _build_full(device, image_size)
    else:
        model = _build_tiny(image_size)
    model.image_size = image_size  # read by BatchBuilder users and postprocess
    compat.make_geometry_encoder_cpu_safe(model.geometry_encoder)
    use_efficient_attention(model)  # same state dict; on a CPU, attention dropout without (N, H, L, S) scores
    use_factored_box_bias(model)  # same state dict; the decoder's box bias is not kept alive per layer
    pin_text_encoder_kernels(model)  # checkpoint recomputation must pick the kernels the forward picked
    if checkpoint is None:
        _init_text_encoder(model)
    else:
        load_sam3_checkpoint(model, download_checkpoint() if checkpoint == "hf" else checkpoint)
    return model.to(device).eval()


def download_checkpoint() -> str:
    """Download ``facebook/sam3``'s ``sam3.pt`` with ``huggingface_hub``; returns the local path."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id=HF_REPO_ID, filename=HF_FILENAME)
    except Exception as error:  # gated repo, no network, no token
        raise CheckpointError(
            f"hf://{HF_REPO_ID}/{HF_FILENAME}: download failed ({type(error).__name__}); request access on "
            "huggingface.co and run `hf auth login`, or pass a local checkpoint path"
        ) from error


def _read_state_dict(path_or_state: str | os.PathLike | Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    if isinstance(path_or_state, Mapping):
        return "<state dict>", dict(path_or_state)
    path = Path(path_or_state)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return str(path), load_file(str(path))
        return str(path), torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # no second copy in RAM
    except pickle.UnpicklingError as error:  # weights_only refused an object whose loading would run code
        detail = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), "")
        raise CheckpointError(f"{path}: cannot read checkpoint: refused, it holds pickled Python objects besides "
                              f"tensors and nothing in it was run{f' ({detail})' if detail else ''}") from error
    except Exception as error:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(error).__name__}: {' '.join(str(error).split())})") from error


def _image_model_keys(state: dict[str, Any]) -> dict[str, Any]:
    """The image model's tensors from an official checkpoint (``detector.*``), or the dict as is."""
    if isinstance(state.get("model"), Mapping):
        state = dict(state["model"])
    if any(key.startswith("detector.") for key in state):
        # as sam3.model_builder._load_checkpoint: keep detector.*, drop the video tracker's weights
        return {key[len("detector."):]: value for key, value in state.items() if key.startswith("detector.")}
    return state


def load_sam3_checkpoint(
    model: nn.Module, path_or_state: str | os.PathLike | Mapping[str, torch.Tensor], strict: bool = True
) -> LoadReport:
    """Load official SAM 3 weights into ``model``; fail (``CheckpointError``) unless every model key is found.

    Accepts the official layout (``{"model": ...}`` or flat, keys under ``detector.``) and a plain
    ``Sam3Image`` state dict. Unexpected keys are reported, not fatal. RoPE tables (``freqs_cis``)
    whose shape differs because the model was built for another image size are kept as built.
    """
    source, raw = _read_state_dict(path_or_state)
    state = _image_model_keys(raw)
    own = model.state_dict()
    recomputed = [k for k in own if k.endswith("freqs_cis") and k in state and state[k].shape != own[k].shape]
    for key in recomputed:
        state[key] = own[key]
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    report = LoadReport(source, len(own) - len(missing), missing, unexpected, recomputed)
    if strict and (missing or wrong_shape):
        problems = ([f"{len(missing)} missing keys: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else [])
        problems += [f"wrong shapes: {', '.join(wrong_shape[:5])}"] if wrong_shape else []
        raise CheckpointError(f"{source}: checkpoint does not fit the model; " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own and state[k].shape == own[k].shape}, strict=False)
    return report
