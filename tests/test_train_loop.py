"""The generic training loop on a stand-in model: learning, exact resume, faults, refusals, outputs."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from torch import nn

from sam3_lora_kit.lora import inject_lora, lora_state_dict
from sam3_lora_kit.runtime import set_seed
from sam3_lora_kit.train import checkpoint as ckpt
from sam3_lora_kit.train.config import TrainConfig
from sam3_lora_kit.train.errors import CheckpointError, NonFiniteLossError, OutputDirError, TrainOutOfMemoryError
from sam3_lora_kit.train.loop import fit
from sam3_lora_kit.train.metrics import read_metrics, write_run_summary

CPU = torch.device("cpu")
FINGERPRINT = {"model_size": "mlp", "preset": "all", "rank": 4}


def make_model(seed: int = 0) -> nn.Module:
    """A 2-layer MLP with LoRA (rank 4, dropout so the RNG matters) on both layers."""
    set_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 4))  # (B, 8) -> (B, 4)
    inject_lora(model, ["0", "2"], rank=4, alpha=8, dropout=0.1)
    return model


def batch_fn(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Micro-batch ``index``: x (16, 8) and the teacher's y (16, 4)."""
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1000 + index))
    teacher = torch.randn(8, 4, generator=torch.Generator().manual_seed(7))
    return x, torch.tanh(x @ teacher)


def loss_fn(model: nn.Module, batch) -> dict[str, torch.Tensor]:
    x, y = batch
    error = model(x) - y  # (16, 4)
    mse = (error**2).mean()
    return {"loss": mse, "mse": mse, "mae": error.abs().mean()}


def config(tmp_path, **changes) -> TrainConfig:
    base = {"output_dir": str(tmp_path / "run"), "steps": 12, "lr": 3e-2, "warmup_steps": 2, "save_every": 4,
            "grad_accum": 2, "keep_checkpoints": 5, "preset": "all-attn"}
    return TrainConfig.from_dict({**base, **changes})


def run(cfg: TrainConfig, model: nn.Module | None = None, steps: int | None = None, loss=loss_fn, **kwargs):
    return fit(model if model is not None else make_model(), batch_fn, loss, cfg, total_steps=steps or cfg.steps,
               fingerprint=kwargs.pop("fingerprint", FINGERPRINT), device=CPU, progress=False,
               curves=kwargs.pop("curves", False), **kwargs)


def test_loss_falls_and_outputs_are_written(tmp_path):
    result = run(config(tmp_path, steps=30, save_every=10), curves=True)
    losses = result.losses
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    out = tmp_path / "run"
    for name in ("adapter.safetensors", "metrics.jsonl", "loss_curves.png", "run_summary.json", "config.yaml"):
        assert (out / name).is_file(), name
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 31))
    assert {"loss", "mse", "mae", "lr", "seconds", "peak_memory_mb", "grad_norm"} <= set(records[0])
    assert records[0]["lr"] < records[2]["lr"] and records[-1]["lr"] < records[10]["lr"]  # warm-up, then decay
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["trainable_params"] == sum(t.numel() for t in lora_state_dict(result.model).values())
    assert summary["adapter_bytes"] == (out / "adapter.safetensors").stat().st_size
    assert summary["loss_first"] == losses[0] and summary["loss_last"] == losses[-1]
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_0000010.pt", "step_0000020.pt", "step_0000030.pt"]


def crashing_at(step: int):
    """A loss function that dies (like a killed process) at the first micro-batch of ``step``."""
    calls = []

    def loss(model, batch):
        calls.append(1)
        if len(calls) > (step - 1) * 2:  # grad_accum 2
            raise KeyboardInterrupt("killed")
        return loss_fn(model, batch)

    return loss


def test_resume_is_bitwise_equal_to_an_unbroken_run(tmp_path):
    unbroken = run(config(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path / "b"), loss=crashing_at(11))  # dies in step 11; newest checkpoint: step 8
    resumed = run(config(tmp_path / "b", resume="latest"))
    assert resumed.resumed_from == 8
    for name, tensor in lora_state_dict(unbroken.model).items():
        assert torch.equal(tensor, lora_state_dict(resumed.model)[name]), name
    assert unbroken.losses == resumed.losses  # the log keeps one line per step across the resume


def test_resume_from_a_given_checkpoint_path(tmp_path):
    unbroken = run(config(tmp_path / "a"))
    run(config(tmp_path / "b"))
    path = tmp_path / "b" / "run" / "checkpoints" / "step_0000004.pt"
    resumed = run(config(tmp_path / "b", resume=str(path)))
    assert resumed.resumed_from == 4 and resumed.losses == unbroken.losses


@pytest.mark.parametrize("key, value", [("rank", 8), ("preset", "vision-attn"), ("model_size", "full")])
def test_checkpoint_from_another_run_is_refused_naming_the_difference(tmp_path, key, value):
    run(config(tmp_path), steps=4)
    with pytest.raises(CheckpointError, match=f"made with {key}=.*this run has {key}={value!r}"):
        run(config(tmp_path, resume="latest"), fingerprint={**FINGERPRINT, key: value})


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def exploding(model, batch):
        terms = loss_fn(model, batch)
        step = exploding.calls // 2  # 0-based; grad_accum 2
        exploding.calls += 1
        return {**terms, "loss": terms["loss"] * (math.inf if step >= 6 else 1.0)}

    exploding.calls = 0
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 7 .*step_0000004\.pt\) is kept"):
        run(config(tmp_path), loss=exploding)
    out = tmp_path / "run"
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_0000004.pt"]
    payload = ckpt.load_checkpoint(out / "checkpoints" / "step_0000004.pt")
    assert payload["step"] == 4 and all(torch.isfinite(t).all() for t in payload["trainable"].values())
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert not (out / "adapter.safetensors").exists()
    run(config(tmp_path / "ref"))  # the kept checkpoint is the unbroken run's step 4
    good = ckpt.load_checkpoint(tmp_path / "ref" / "run" / "checkpoints" / "step_0000004.pt")
    for name, tensor in good["trainable"].items():
        assert torch.equal(payload["trainable"][name], tensor)


@pytest.mark.parametrize("case", ["file-in-path", "disk-full", "not-writable"])
def test_unusable_output_folder_fails_before_training(tmp_path, monkeypatch, case):
    calls = []

    def counting(model, batch):
        calls.append(1)
        return loss_fn(model, batch)

    output_dir = tmp_path / "run"
    if case == "file-in-path":
        (tmp_path / "blocker").write_text("a file, not a folder")
        output_dir = tmp_path / "blocker" / "run"
    elif case == "disk-full":
        from collections import namedtuple

        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    else:
        real_mkstemp = ckpt.tempfile.mkstemp

        def refusing(*args, **kwargs):
            if kwargs.get("prefix", "").startswith(".write-test"):
                raise PermissionError(13, "Permission denied")
            return real_mkstemp(*args, **kwargs)

        monkeypatch.setattr(ckpt.tempfile, "mkstemp", refusing)
    with pytest.raises(OutputDirError) as caught:
        run(config(tmp_path, output_dir=str(output_dir)), loss=counting)
    assert str(output_dir) in str(caught.value) and "\n" not in str(caught.value)
    assert {"file-in-path": "cannot create", "disk-full": "MiB free", "not-writable": "not writable"}[case] in str(caught.value)
    assert calls == []


def test_out_of_memory_names_the_knobs(tmp_path):
    def oom(model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(TrainOutOfMemoryError) as caught:
        run(config(tmp_path, image_size=1008, batch_size=4), loss=oom)
    text = str(caught.value)
    for part in ("image_size=1008", "batch_size=4", "preset='all-attn'", "peak memory", "lower image_size", "activation_checkpointing"):
        assert part in text


def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    run(config(tmp_path), steps=4)
    out = tmp_path / "run"

    def torn_save(obj, handle):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(ckpt.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        run(config(tmp_path, resume="latest"), steps=8)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_0000004.pt"]
    assert ckpt.resolve_resume("latest", out)[1]["step"] == 4


def test_torn_newest_checkpoint_falls_back_and_pickles_are_refused(tmp_path):
    run(config(tmp_path), steps=8)
    out = tmp_path / "run"
    newest = ckpt.list_checkpoints(out)[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # e.g. power lost before the data reached the disk
    path, payload = ckpt.resolve_resume("latest", out)
    assert payload["step"] == 4

    import pickle

    class Smuggler:
        def __reduce__(self):
            return (shutil.rmtree, (str(out),))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": ckpt.FORMAT, "payload": Smuggler()}))
    with pytest.raises(CheckpointError, match="not a readable sam3-lora-kit checkpoint"):
        ckpt.load_checkpoint(evil)
    assert out.is_dir()  # nothing ran


def test_write_run_summary_merges_atomically(tmp_path):
    path = tmp_path / "run_summary.json"
    write_run_summary(path, loss_first=3.0, device="cpu")
    merged = write_run_summary(path, map_after=0.5, device="cuda")
    assert merged == {"loss_first": 3.0, "device": "cuda", "map_after": 0.5} == json.loads(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["run_summary.json"]
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        write_run_summary(path, x=1)


def test_a_fresh_run_into_an_earlier_runs_folder_stops_and_touches_nothing(tmp_path):
    run(config(tmp_path, steps=8, save_every=4, keep_checkpoints=2))
    out = tmp_path / "run"
    write_run_summary(out / "run_summary.json", map_before=0.1, map_after=0.9)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputDirError, match=r"holds an earlier run \(checkpoint step_0000008.pt\); .*--resume.*--overwrite") as caught:
        run(config(tmp_path, steps=6, save_every=2))
    assert str(out) in str(caught.value)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_the_earlier_run_whole(tmp_path):
    run(config(tmp_path, steps=12, save_every=4, keep_checkpoints=2))
    out = tmp_path / "run"
    write_run_summary(out / "run_summary.json", map_before=0.1, map_after=0.9)
    result = run(config(tmp_path, steps=6, save_every=2, keep_checkpoints=2, overwrite=True))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_0000004.pt", "step_0000006.pt"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["steps"] == 6 and "map_before" not in summary and "map_after" not in summary
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 7))
    assert result.losses and ckpt.resolve_resume("latest", out)[1]["step"] == 6


def test_a_resumed_run_keeps_what_the_summary_already_held(tmp_path):
    run(config(tmp_path, steps=4, save_every=2))
    out = tmp_path / "run"
    write_run_summary(out / "run_summary.json", note="kept")
    run(config(tmp_path, steps=8, save_every=2, resume="latest"))
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["note"] == "kept" and summary["steps"] == 8
