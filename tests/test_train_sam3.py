"""Training the tiny SAM 3 on CPU: the loss falls, a SIGKILLed run resumes bitwise, refusals, 2-process DDP."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sam3_lora_kit.train.config import TrainConfig
from sam3_lora_kit.train.errors import CheckpointError

IMAGE_SIZE = 112  # tiny model, 8 x 8 ViT tokens: the cheapest size that keeps windows and RoPE honest


@pytest.fixture(scope="module")
def clean_sample(tmp_path_factory, repo_root) -> Path:
    """The bundled sample converted to clean COCO."""
    from sam3_lora_kit.data.convert import convert_roboflow

    target = tmp_path_factory.mktemp("sample") / "coco"
    convert_roboflow(repo_root / "data" / "sample" / "coco-segmentation", target)
    return target


def params(dataset_dir: Path, output_dir: Path, **changes) -> dict:
    base = {"dataset_dir": str(dataset_dir), "output_dir": str(output_dir), "model_size": "tiny", "image_size": IMAGE_SIZE,
            "batch_size": 2, "steps": 6, "warmup_steps": 1, "lr": 3e-3, "rank": 4, "alpha": 8.0, "dropout": 0.05,
            "save_every": 2, "keep_checkpoints": 4, "device": "cpu", "preset": "all-attn"}
    return {**base, **changes}


class FirstImages:
    """The first ``n`` items of a dataset (an overfitting run sees the same batch every step)."""

    def __init__(self, dataset, n: int) -> None:
        self.dataset, self.n, self.category_names = dataset, n, dataset.category_names

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index]


def test_tiny_sam3_loss_falls_on_a_fixed_batch(clean_sample, tmp_path):
    from sam3_lora_kit.data import CocoSegmentationDataset
    from sam3_lora_kit.train import train

    dataset = FirstImages(CocoSegmentationDataset(clean_sample, "train"), 2)
    cfg = params(clean_sample, tmp_path / "run", steps=8, flip_prob=0.0, negative_ratio=0.0, dropout=0.0, save_every=8)
    result = train(cfg, dataset=dataset, progress=False)
    losses = result.losses
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    summary = result.summary
    assert summary["model_size"] == "tiny" and summary["device"] == "cpu" and 0 < summary["trainable_percent"] < 100
    assert summary["activation_checkpointing"] is False and summary["frozen_dtype"] == "float32"  # "auto" for tiny
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_bbox"} <= set(result.metrics[0])
    assert result.report is not None and result.report.trainable == summary["trainable_params"]


def test_frozen_base_in_bfloat16_trains_and_its_adapter_loads_into_a_float32_model(clean_sample, tmp_path):
    from sam3_lora_kit.lora import load_adapter, lora_state_dict, stored_parameter_names
    from sam3_lora_kit.sam3 import apply_lora, build_sam3
    from sam3_lora_kit.train import train

    model = build_sam3("tiny", device="cpu", image_size=IMAGE_SIZE)
    cfg = params(clean_sample, tmp_path / "run", steps=2, save_every=2, frozen_dtype="bfloat16", activation_checkpointing=True)
    result = train(cfg, model=model, progress=False)
    stored = stored_parameter_names(model)
    assert stored and all(name.endswith("weight") for name in stored)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    plain = build_sam3("tiny", device="cpu", image_size=IMAGE_SIZE)
    apply_lora(plain, preset="all-attn", rank=4, alpha=8.0)
    load_adapter(plain, tmp_path / "run" / "adapter.safetensors")
    trained = lora_state_dict(model)
    assert trained.keys() == lora_state_dict(plain).keys()
    assert all(torch.equal(trained[k], lora_state_dict(plain)[k]) for k in trained)
    assert any(k.endswith("lora_B") and trained[k].abs().sum() > 0 for k in trained)


def _cli(config_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "sam3_lora_kit.cli", "train", "--config", str(config_path), "--no-progress", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_mid_run_then_resume_equals_an_unbroken_run(clean_sample, tmp_path):
    steps = 8
    configs = {}
    for name in ("unbroken", "killed"):
        configs[name] = TrainConfig.from_dict(params(clean_sample, tmp_path / name, steps=steps)).to_yaml(tmp_path / f"{name}.yaml")
    unbroken = _cli(configs["unbroken"])
    killed = _cli(configs["killed"])
    target = tmp_path / "killed" / "checkpoints" / "step_0000004.pt"
    deadline = time.monotonic() + 600
    while not target.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert killed.poll() is None, "the run ended before it could be killed: " + killed.stdout.read().decode()[-2000:]
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "adapter.safetensors").exists()
    out, _ = unbroken.communicate(timeout=600)
    assert unbroken.returncode == 0, out.decode()[-2000:]

    resumed = _cli(configs["killed"], "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out.decode()[-2000:]
    a = load_file(tmp_path / "unbroken" / "adapter.safetensors")
    b = load_file(tmp_path / "killed" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.endswith("lora_B") and a[k].abs().sum() > 0 for k in a)  # it trained


@pytest.mark.parametrize("key, value", [("rank", 8), ("preset", "vision-attn")])
def test_resume_refuses_a_checkpoint_from_another_preset_or_rank(clean_sample, tmp_path, key, value):
    from sam3_lora_kit.train import train

    train(params(clean_sample, tmp_path, steps=1, save_every=1, batch_size=1), progress=False)
    with pytest.raises(CheckpointError, match=f"made with {key}=.*this run has {key}={value!r}"):
        train(params(clean_sample, tmp_path, steps=2, batch_size=1, resume="latest", **{key: value}), progress=False)


def _ddp_worker(rank: int, world_size: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from sam3_lora_kit.lora import lora_state_dict
    from sam3_lora_kit.train import train

    result = train(cfg, progress=False)
    torch.save(dict(lora_state_dict(result.model)), Path(out) / f"rank{rank}.pt")


def test_ddp_two_cpu_processes_hold_identical_adapters(clean_sample, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = params(clean_sample, tmp_path / "run", steps=2, batch_size=1, save_every=2)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, cfg, str(tmp_path)), nprocs=2, join=True)
    zero, one = torch.load(tmp_path / "rank0.pt", weights_only=True), torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert zero.keys() == one.keys() and all(torch.equal(zero[k], one[k]) for k in zero)
    assert any(k.endswith("lora_B") and zero[k].abs().sum() > 0 for k in zero)  # a step was taken
    saved = load_file(tmp_path / "run" / "adapter.safetensors")  # written by rank 0 only
    assert all(torch.equal(saved[k], zero[k]) for k in zero)
    import json

    assert json.loads((tmp_path / "run" / "run_summary.json").read_text())["world_size"] == 2


@pytest.mark.parametrize("size, given, expected", [
    ("full", {}, (True, "bfloat16")),
    ("tiny", {}, (False, "float32")),
    ("full", {"activation_checkpointing": False, "frozen_dtype": "float32"}, (False, "float32")),
    ("tiny", {"activation_checkpointing": True, "frozen_dtype": "float16"}, (True, "float16")),
])
def test_auto_memory_savers_are_on_for_the_full_model_only(size, given, expected):
    from sam3_lora_kit.train.trainer import resolve_memory_savers

    config = TrainConfig.from_dict({"dataset_dir": "data", **given})
    assert resolve_memory_savers(config, size) == expected


def test_a_cuda_device_without_an_index_gets_the_current_one(monkeypatch):
    """``torch.cuda.set_device`` refuses a bare ``cuda`` device; ``--device cuda`` must still train."""
    from sam3_lora_kit.train import trainer
    from sam3_lora_kit.train.distributed import DistInfo

    chosen = []
    monkeypatch.setattr(trainer, "pick_device", lambda preferred: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: chosen.append(torch.device(device)))
    config = TrainConfig.from_dict({"dataset_dir": "data", "device": "cuda"})
    single = DistInfo()
    assert trainer._device_for(config, single) == torch.device("cuda", 3) and chosen == [torch.device("cuda", 3)]
    ranked = DistInfo(rank=1, world_size=2, local_rank=1)
    assert trainer._device_for(config, ranked) == torch.device("cuda", 1)


def test_a_callers_model_gets_its_text_encoder_back_and_the_summary_counts_it(clean_sample, tmp_path):
    from sam3_lora_kit.lora import count_parameters
    from sam3_lora_kit.sam3 import build_sam3
    from sam3_lora_kit.train import train

    model = build_sam3("tiny", device="cpu", image_size=IMAGE_SIZE)
    encoder = model.backbone.language_backbone
    result = train(params(clean_sample, tmp_path / "run", steps=1, save_every=1), model=model, progress=False)
    assert model.backbone.language_backbone is encoder  # put back after training
    assert result.summary["text_features"] == "cached once for 3 category names"
    assert (result.summary["trainable_params"], result.summary["total_params"]) == count_parameters(model)
    kept = train(params(clean_sample, tmp_path / "kept", steps=1, save_every=1, text_cache=False), model=model, progress=False)
    assert kept.summary["text_features"] == "encoded at every step"


def test_the_trainers_own_model_frees_its_text_encoder_and_the_adapter_still_loads(clean_sample, tmp_path, monkeypatch):
    import gc
    import weakref

    from sam3_lora_kit.lora import count_parameters, load_adapter
    from sam3_lora_kit.sam3 import apply_lora, build_sam3, text_cache
    from sam3_lora_kit.sam3.text_cache import CachedTextEncoder
    from sam3_lora_kit.train import train

    taken_out = []
    original = text_cache.cache_text_features

    def recording(*args, **kwargs):
        encoder = original(*args, **kwargs)
        taken_out.append(weakref.ref(encoder))
        return encoder

    monkeypatch.setattr(text_cache, "cache_text_features", recording)
    result = train(params(clean_sample, tmp_path / "run", steps=1, save_every=1), progress=False)
    assert isinstance(result.model.backbone.language_backbone, CachedTextEncoder)
    gc.collect()
    assert len(taken_out) == 1 and taken_out[0]() is None  # nothing holds the encoder: its memory is freed
    plain = build_sam3("tiny", device="cpu", image_size=IMAGE_SIZE)
    apply_lora(plain, preset="all-attn", rank=4, alpha=8.0)
    load_adapter(plain, tmp_path / "run" / "adapter.safetensors")  # strict: the whole base's fingerprint
    assert result.summary["total_params"] == count_parameters(plain)[1]


def test_checkpointing_the_neck_keeps_the_gradients_and_saves_less():
    from benchmarks.train_step import sample_batch
    from sam3_lora_kit.sam3 import apply_lora, build_loss, build_sam3, training_step_loss
    from sam3_lora_kit.train.trainer import _checkpoint_forward, set_activation_checkpointing

    torch.manual_seed(0)
    model = build_sam3("tiny", device="cpu", image_size=IMAGE_SIZE)
    apply_lora(model, preset="all-attn", rank=4, alpha=8.0)
    branches = list(model.backbone.vision_backbone.convs)
    assert set_activation_checkpointing(model, True) == 2 + len(branches)  # the ViT, the seg head, each branch
    batch, loss_fn = sample_batch(2, IMAGE_SIZE), build_loss(torch.device("cpu"))
    model.train()

    def step() -> tuple[int, dict[str, torch.Tensor]]:
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = training_step_loss(model, batch, loss_fn)["core_loss"]
        loss.backward()
        return sum(saved.values()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    saved_with, grads_with = step()
    for branch in branches:
        _checkpoint_forward(branch, False)
    assert not any("forward" in vars(branch) for branch in branches)
    saved_without, grads_without = step()
    assert saved_with < saved_without
    for name, grad in grads_without.items():
        torch.testing.assert_close(grads_with[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_evaluation_during_training_is_served_by_the_text_cache(clean_sample, tmp_path):
    from sam3_lora_kit.data import CocoSegmentationDataset
    from sam3_lora_kit.evaluate import evaluate_coco
    from sam3_lora_kit.sam3.text_cache import CachedTextEncoder
    from sam3_lora_kit.train import train

    valid = CocoSegmentationDataset(clean_sample, "valid")
    seen = []

    def eval_fn(model, step):
        seen.append(type(model.backbone.language_backbone))
        metrics = evaluate_coco(model, valid, max_images=2, progress=False)
        return {"segm_mAP": metrics["segm_mAP"]}

    result = train(params(clean_sample, tmp_path / "run", steps=2, save_every=2, eval_every=1), eval_fn=eval_fn, progress=False)
    assert seen == [CachedTextEncoder, CachedTextEncoder]  # the evaluation prompts with the same category names
    assert [r["step"] for r in result.metrics if "segm_mAP" in r] == [1, 2]
