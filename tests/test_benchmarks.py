"""``python -m benchmarks --quick`` runs end to end and writes well-formed results (no timing asserted)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` lives at the repository root
from benchmarks import converter, lora_layers, lora_profile, registry, train_step  # noqa: E402
from benchmarks.common import summarise  # noqa: E402


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    completed = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=repo_root,
                               env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def test_quick_json_structure(quick_results):
    result = json.loads((quick_results / "lora_layers.json").read_text(encoding="utf-8"))
    assert result["name"] == "lora_layers" and result["quick"] is True
    assert result["machine"]["versions"]["torch"] and result["machine"]["versions"]["peft"]
    assert result["settings"]["repeats"] >= 1
    body = result["result"]
    assert body["parameters"]["tokens_per_image"] == 72 * 72
    assert len(body["linear"]) == len(lora_layers.grid(quick=True))
    for case in body["linear"]:
        for comparison, reference in (("vs_base", "base"), ("vs_peft", "peft")):
            summary = case[comparison]
            assert {"base", "lora", "peft"} <= set(summary["median_s"])
            assert summary["ratio"][reference] == pytest.approx(1.0)
            assert all(len(times) == result["settings"]["repeats"] for times in summary["times_s"].values())
        assert case["lora_path"] in ("fused", "inplace")
        assert case["saved_bytes"]["lora"] > 0
    assert {mode for case in body["merged"] for mode in ("train", "inference") if case[mode]["ratio"]["merged"] > 0} == {"train", "inference"}
    assert all(case[mode]["ratio"]["copy"] > 0 for case in body["merged"] for mode in ("train", "inference"))  # the control
    assert all(case[mode]["ratio"]["unloaded"] > 0 for case in body["merged"] for mode in ("train", "inference"))
    assert all(case["vs_peft"]["ratio"]["lora"] > 0 for case in body["mha"])
    assert set(body["goals"]) == set(lora_layers.GOALS)
    assert all(isinstance(goal["met"], bool) for goal in body["goals"].values())


def test_quick_lora_profile_splits_the_kits_extra_time(quick_results):
    body = json.loads((quick_results / "lora_profile.json").read_text(encoding="utf-8"))["result"]
    (case,) = body["cases"]
    for name in ("base", "kit"):
        assert sum(case["categories_ms"][name].values()) == pytest.approx(case["profiled_ms"][name])
    # the frozen layer runs two big GEMMs and no rank-sized product; the kit runs both kinds
    assert case["categories_ms"]["base"]["rank-sized products"] == 0
    assert case["categories_ms"]["base"]["big GEMMs"] > 0.5 * case["profiled_ms"]["base"]
    assert case["categories_ms"]["kit"]["rank-sized products"] > 0 and case["categories_ms"]["kit"]["big GEMMs"] > 0
    big = [row for row in case["operators"]["base"] if row["category"] == "big GEMMs"]
    assert sum(row["calls_per_step"] for row in big) == 2
    assert case["timing"]["ratio"]["kit"] > 0
    assert [len(case["profiled_rounds_ms"][name]) for name in ("base", "kit")] == [body["parameters"]["rounds"]] * 2
    assert "Where LoRALinear's time goes" in (quick_results / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name,shapes,expected", [
    ("aten::mm", [[5184, 256], [256, 256]], "big GEMMs"),
    ("aten::addmm", [[264], [5184, 256], [256, 264]], "big GEMMs"),
    ("aten::addmm", [[5184, 8], [5184, 256], [256, 8]], "rank-sized products"),
    ("aten::bmm", [[4, 8, 1296], [4, 1296, 256]], "rank-sized products"),
    ("aten::mm", [], "rank-sized products"),
    ("aten::copy_", [[5184, 264], [5184, 264]], "copies and element-wise"),
    ("aten::view", [[5184, 256]], "the rest"),
])
def test_lora_profile_categories(name, shapes, expected):
    assert lora_profile.category(name, shapes, big_flops=5184 * 256 * 256) == expected


def test_lora_profile_matmul_flops():
    assert lora_profile.matmul_flops("aten::addmm", [[3], [2, 5], [5, 3]]) == 2 * 2 * 5 * 3
    assert lora_profile.matmul_flops("aten::bmm", [[4, 2, 5], [4, 5, 3]]) == 4 * 2 * 2 * 5 * 3
    assert lora_profile.matmul_flops("aten::copy_", [[2, 2], [2, 2]]) is None


def test_quick_readme_and_plot(quick_results):
    readme = (quick_results / "README.md").read_text(encoding="utf-8")
    assert "| goal | limit |" in readme and "lora_layers.png" in readme
    for plot in ("lora_layers.png", "train_step.png", "converter.png"):
        assert plot in readme
        assert (quick_results / plot).read_bytes()[:4] == b"\x89PNG"


def test_quick_skips_notebooks(quick_results):
    assert not (quick_results / "notebooks.json").exists()


def test_quick_train_step(quick_results):
    body = json.loads((quick_results / "train_step.json").read_text(encoding="utf-8"))["result"]
    runs = {run["config"]["preset"]: run for run in body["runs"]}
    assert set(runs) == {"all-attn", "full"} and all(run["config"]["size"] == "tiny" for run in runs.values())
    for run in runs.values():
        assert run["status"] == "ok", run.get("log_tail")
        assert run["s_per_step"] > 0 and run["peak_rss"] > run["param_bytes"]
        model = run["memory_model"]
        assert model["weights"] == run["param_bytes"] and model["adamw"] == 2 * run["trainable_bytes"]
        assert model["activations"] > 0 and model["predicted_peak"] > 0
        phases = run["peak_rss_phases"]  # each phase's own peak, VmHWM reset in between
        assert list(phases) == list(train_step.PHASES) and all(phases.values())
        assert max(phases.values()) <= run["peak_rss"]
        assert model["measured_peak"] == max(phases[p] for p in train_step.PHASES[1:]) and model["peak_phase"] in train_step.PHASES[1:]
    assert runs["full"]["params_trainable"] == runs["full"]["params_total"]
    assert 0 < runs["all-attn"]["params_trainable"] < runs["full"]["params_trainable"] / 10
    assert body["ratios"][0]["full_over_lora_memory"] > 0


def test_quick_presets(quick_results):
    body = json.loads((quick_results / "sam3_presets.json").read_text(encoding="utf-8"))["result"]
    assert body["parameters"]["size"] == "tiny" and body["checkpoint_bytes"] > 0
    for row in body["presets"].values():
        assert 0 < row["trainable"] < row["total"] and row["adapter_bytes"] > 4 * row["trainable"]


def test_quick_attention(quick_results):
    body = json.loads((quick_results / "attention.json").read_text(encoding="utf-8"))["result"]
    (row,) = body["rows"]
    for variant in ("pytorch", "blockwise"):
        figures = row[variant]
        assert figures["status"] == "ok", figures
        assert figures["peak_rss"] > figures["rss_inputs"] > 0 and len(figures["times_s"]) == body["parameters"]["repeats"]
    assert row["memory_ratio"] > 0 and row["time_ratio"] > 0
    readme = (quick_results / "README.md").read_text(encoding="utf-8")
    assert "blockwise / PyTorch memory" in readme


def test_quick_converter(quick_results):
    body = json.loads((quick_results / "converter.json").read_text(encoding="utf-8"))["result"]
    assert {run["format"] for run in body["runs"]} == {"yolo", "voc"}
    for run in body["runs"]:
        assert run["kit"]["returncode"] == 0 and run["supervision"]["returncode"] == 0, run["kit"]["stderr_tail"]
        assert run["counts_equal"] and run["kit"]["counts"]["images"] == run["images"]
        assert run["kit"]["peak_rss"] > 0 and run["supervision"]["peak_rss"] > 0
        # the kit's peak counts its file-writing child too, measured apart
        assert run["kit"]["file_writer_peak_rss"] > 0
        assert run["kit"]["peak_rss"] == run["kit"]["process_peak_rss"] + run["kit"]["file_writer_peak_rss"]


def test_converter_compiles_both_sides_bytecode_before_timing(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    modules = [tmp_path / "sam3_lora_kit" / "data" / "convert.py", tmp_path / "benchmarks" / "converter.py"]
    for module in modules:
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text("VALUE = 1\n", encoding="utf-8")
    converter.compile_bytecode(tmp_path)
    for module in modules:
        assert Path(importlib.util.cache_from_source(str(module))).is_file(), module


@pytest.mark.parametrize("train_images", [1, 45])
def test_converter_inputs(tmp_path, train_images):
    from sam3_lora_kit.data import convert_roboflow, sample_data_dir

    made = converter.make_yolo_input(sample_data_dir() / "yolo-segmentation", tmp_path / "yolo", train_images)
    converter.make_voc_input(tmp_path / "yolo", tmp_path / "voc")
    for fmt in ("yolo", "voc"):
        convert_roboflow(tmp_path / fmt, tmp_path / f"out-{fmt}", format=fmt)
        counts = converter.kit_counts(tmp_path / f"out-{fmt}")
        assert counts == {"images": made["images"], "annotations": made["instances"]}, fmt


@pytest.mark.parametrize("act_ckpt,steps,expected_gib", [
    (False, 1, 1 + 4 + max(32 * 0.1 + 0.5, 4 + 8)),  # one step: weights + max(activations, grads + AdamW)
    (False, 2, 1 + 4 + 8 + max(32 * 0.1 + 0.5, 4)),  # steady state: weights + AdamW + max(activations, grads)
    (True, 2, 1 + 4 + 8 + max(32 * 0.01 + 0.1 + 0.5, 4)),  # checkpointed: block inputs + one block recomputed
])
def test_memory_model(act_ckpt, steps, expected_gib):
    gib = 2**30
    row = {"status": "ok", "config": {"act_ckpt": act_ckpt, "warmup": steps - 1, "steps": 1},
           "param_bytes": 4 * gib, "trainable_bytes": 4 * gib, "rss_after_build": 5 * gib, "rss_after_import": gib // 2,
           "vit_blocks": 32, "vit_block_saved_bytes": 0.1 * gib, "vit_block_input_bytes": 0.01 * gib,
           "saved_forward_bytes": (32 * (0.01 if act_ckpt else 0.1) + 0.5) * gib, "peak_rss": 10 * gib}
    assert train_step.memory_model(row)["predicted_peak"] / gib == pytest.approx(expected_gib)


def test_memory_model_compares_the_training_phases_not_the_build():
    gib = 2**30
    row = {"status": "ok", "config": {"act_ckpt": True, "warmup": 0, "steps": 1},
           "param_bytes": 2 * gib, "trainable_bytes": 0, "rss_after_build": 3 * gib, "rss_after_import": gib // 2,
           "vit_blocks": 32, "vit_block_saved_bytes": 0.1 * gib, "vit_block_input_bytes": 0.01 * gib,
           "saved_forward_bytes": 0.5 * gib, "peak_rss": 5 * gib,
           "peak_rss_phases": {"build": 5 * gib, "forward": 3 * gib, "backward": 4 * gib, "optimizer": 2 * gib}}
    model = train_step.memory_model(row)
    assert model["measured_peak"] == 4 * gib and model["peak_phase"] == "backward" and model["build_peak"] == 5 * gib
    del row["peak_rss_phases"]  # a run without phases: the whole process's peak
    model = train_step.memory_model(row)
    assert model["measured_peak"] == 5 * gib and model["peak_phase"] is None


def test_reset_peak_rss_lowers_the_high_water_mark():
    if not train_step._reset_peak_rss():
        pytest.skip("this kernel does not allow clear_refs")
    block = b"\x01" * (256 * 2**20)  # written: 256 MiB resident
    del block
    high = train_step._rss_bytes()
    assert train_step._reset_peak_rss()
    assert train_step._rss_bytes() < high - 128 * 2**20


def test_memory_model_on_cuda_counts_tensors_only():
    """A CUDA row: no runtime term, and the measured peak is ``max_memory_allocated``, not the RSS."""
    gib = 2**30
    row = {"status": "ok", "config": {"act_ckpt": True, "warmup": 1, "steps": 3},
           "param_bytes": 2 * gib, "trainable_bytes": 0.01 * gib, "rss_after_build": 5 * gib, "rss_after_import": gib,
           "vit_blocks": 32, "vit_block_saved_bytes": 0.1 * gib, "vit_block_input_bytes": 0.01 * gib,
           "saved_forward_bytes": 1.0 * gib, "peak_rss": 4 * gib, "cuda_peak_bytes": 3 * gib}
    model = train_step.memory_model(row)
    assert model["runtime"] == 0
    assert model["predicted_peak"] / gib == pytest.approx(2 + 0.02 + (1.0 - 0.32 + 0.32 + 0.1))
    assert model["measured_peak"] == 3 * gib and model["measured_over_predicted"] == pytest.approx(3 / 3.12)


def test_cuda_results_get_their_own_file():
    from benchmarks.__main__ import result_file_name

    assert result_file_name("train_step", torch.device("cpu")) == "train_step.json"
    assert result_file_name("train_step", torch.device("cuda")) == "train_step_cuda.json"


def test_registry_lists_every_benchmark():
    names = {module.NAME for module in registry.load()}
    assert names == {"lora_layers", "lora_profile", "attention", "train_step", "activations", "sam3_presets", "converter",
                     "notebooks"}


def test_every_benchmark_names_sources_that_exist():
    from benchmarks.provenance import SHARED_SOURCES, source_files

    for module in registry.load():
        files = source_files(module.SOURCES)
        assert f"benchmarks/{module.NAME}.py" in files, module.NAME
        assert set(SHARED_SOURCES) <= set(files)
        assert all(not name.endswith(".pyc") for name in files)


def test_quick_results_record_the_code_they_were_measured_with(quick_results, repo_root):
    import hashlib

    result = json.loads((quick_results / "lora_layers.json").read_text(encoding="utf-8"))
    sources = result["code"]["sources"]
    layers = "sam3_lora_kit/lora/layers.py"
    assert sources[layers] == hashlib.sha256((repo_root / layers).read_bytes()).hexdigest()[:16]
    assert "benchmarks/lora_layers.py" in sources and "sam3_lora_kit/data/convert.py" not in sources
    readme = (quick_results / "README.md").read_text(encoding="utf-8")
    assert readme.count("measured with the code as it stands") == len(list(quick_results.glob("*.json")))


def test_provenance_names_what_changed_since_a_run(tmp_path):
    from benchmarks.provenance import changed_sources, code_record, describe

    for name in ("benchmarks/common.py", "benchmarks/measure.py", "pkg/a.py", "pkg/b.py", "pkg/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n", encoding="utf-8")
    record = code_record(["pkg"], tmp_path)
    assert record["commit"] is None  # not a git checkout
    assert set(record["sources"]) == {"benchmarks/common.py", "benchmarks/measure.py", "pkg/a.py", "pkg/b.py"}
    assert changed_sources(record, ["pkg"], tmp_path) == []
    assert describe(record, ["pkg"], tmp_path) == "measured with the code as it stands"
    (tmp_path / "pkg/notes.txt").write_text("not a source\n", encoding="utf-8")
    assert changed_sources(record, ["pkg"], tmp_path) == []
    (tmp_path / "pkg/a.py").write_text("# changed\n", encoding="utf-8")
    (tmp_path / "pkg/b.py").unlink()
    (tmp_path / "pkg/c.py").write_text("# new\n", encoding="utf-8")
    assert changed_sources(record, ["pkg"], tmp_path) == ["pkg/a.py", "pkg/b.py", "pkg/c.py"]
    assert describe(record, ["pkg"], tmp_path) == "**code changed since this run: `pkg/a.py`, `pkg/b.py`, `pkg/c.py`**"
    assert describe(None, ["pkg"], tmp_path) == "code version not recorded"
    with pytest.raises(FileNotFoundError, match="missing"):
        code_record(["missing"], tmp_path)


def test_git_commit_is_the_checkouts_own(tmp_path, repo_root):
    from benchmarks.provenance import git_commit

    completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True, text=True)
    if completed.returncode != 0:
        pytest.skip("the repository is not a git checkout here")
    assert git_commit(repo_root) == completed.stdout.strip()
    assert git_commit(repo_root / "benchmarks") is None  # a folder inside a checkout is not one
    assert git_commit(tmp_path) is None


@pytest.mark.parametrize("in_features,out_features", lora_layers.SHAPES)
def test_full_grid_covers_sam3_shapes(in_features, out_features):
    cases = lora_layers.grid(quick=False)
    ranks = {r for i, o, b, r, n in cases if (i, o) == (in_features, out_features) and b == 1 and n == 72 * 72}
    batches = {b for i, o, b, r, n in cases if (i, o) == (in_features, out_features)}
    assert ranks == {4, 8, 16, 32, 64} and {1, 4} <= batches


@pytest.mark.parametrize("in_features,out_features", lora_layers.FEW_TOKEN_SHAPES)
def test_full_grid_covers_decoder_query_counts(in_features, out_features):
    """The decoder's 200 queries run its 256-wide layers on the in-place path: the grid times them."""
    from sam3_lora_kit.lora.layers import _use_fused

    cases = [(b, r) for i, o, b, r, n in lora_layers.grid(quick=False) if (i, o, n) == (in_features, out_features, 200)]
    assert sorted(cases) == [(1, 8), (4, 8)]
    assert not _use_fused(torch.empty(200, in_features), torch.empty(out_features, in_features))


@pytest.mark.parametrize("times,expected", [
    ({"base": [1.0, 2.0, 1.0], "lora": [1.1, 2.2, 1.1]}, 1.1),
    ({"base": [1.0, 1.0, 1.0], "lora": [0.5, 5.0, 0.9]}, 0.9),
])
def test_summarise_pairs_repeats(times, expected):
    assert summarise(times, "base")["ratio"]["lora"] == pytest.approx(expected)


def test_ratios_pair_runs_of_the_same_image_size():
    gib = 2**30

    def row(preset, image_size, peak_gib, frozen="float32"):
        config = {"size": "full", "preset": preset, "act_ckpt": True, "image_size": image_size, "device": "cpu",
                  "frozen_dtype": frozen}
        return {"config": config, "status": "ok", "peak_rss": peak_gib * gib, "s_per_step": 1.0, "text_cache": preset != "full"}

    rows = [row("all-attn", 504, 4.0, "bfloat16"), row("full", 504, 14.0), row("all-attn", 1008, 7.0, "bfloat16")]
    by_size = {entry["image_size"]: entry for entry in train_step.ratios(rows)}
    assert by_size[504]["full_over_lora_memory"] == pytest.approx(3.5)
    assert "full_over_lora_memory" not in by_size[1008] and by_size[1008]["full_status"] == "not run"
    goals = train_step.goals(rows)
    assert goals["full_over_lora_memory"]["value"] == pytest.approx(3.5)
    assert goals["lora_peak_gb_1008_cpu"]["value"] == pytest.approx(7.0 * gib / 1e9)
    assert goals["lora_peak_gb_1008_cpu"]["met"] is True
    rows[2]["peak_rss"] = 9 * gib
    assert train_step.goals(rows)["lora_peak_gb_1008_cpu"]["met"] is False
    # with full fine-tuning also measured at 1008 px, the goal is read there, the 504 px ratio noted
    rows.append(row("full", 1008, 18.0))
    goal = train_step.goals(rows)["full_over_lora_memory"]
    assert goal["value"] == pytest.approx(2.0) and goal["met"] is False and goal["image_size"] == 1008
    assert "1008 px" in goal["note"] and "also measured: 3.50 at 504 px" in goal["note"]


def test_ratios_pair_runs_of_the_same_allocator_setting():
    gib = 2**30

    def row(preset, peak_gib, threshold=None, frozen="float32"):
        config = {"size": "full", "preset": preset, "act_ckpt": True, "image_size": 1008, "device": "cpu",
                  "frozen_dtype": frozen, "malloc_mmap_threshold": threshold}
        return {"config": config, "status": "ok", "peak_rss": peak_gib * gib, "s_per_step": 1.0, "text_cache": preset != "full"}

    rows = [row("all-attn", 11.0, None, "bfloat16"), row("all-attn", 7.0, 131072, "bfloat16"), row("full", 17.5, 131072)]
    by_malloc = {entry["malloc"]: entry for entry in train_step.ratios(rows)}
    assert by_malloc["mmap >= 128 KiB"]["full_over_lora_memory"] == pytest.approx(2.5)
    assert "full_over_lora_memory" not in by_malloc["default"]  # no full run with glibc's defaults
    goal = train_step.goals(rows)["lora_peak_gb_1008_cpu"]
    # the verdict is glibc's default allocator's, as a user gets it; the tuned setting is only noted
    assert goal["value"] == pytest.approx(11.0 * gib / 1e9) and goal["met"] is False
    assert "11.81 GB with malloc default" in goal["note"] and "7.52 GB with malloc mmap >= 128 KiB" in goal["note"]
    rows[0]["peak_rss"] = 6 * gib
    assert train_step.goals(rows)["lora_peak_gb_1008_cpu"]["met"] is True
    del rows[0]  # only the tuned allocator measured: no verdict
    assert train_step.goals(rows)["lora_peak_gb_1008_cpu"]["met"] is None


def test_full_cpu_run_measures_1008_px_with_both_allocator_settings():
    import torch

    from benchmarks.common import Settings

    settings = Settings(quick=False, device=torch.device("cpu"), threads=2, repeats=3, warmup=1)
    at_1008 = [(c["preset"], c.get("malloc_mmap_threshold")) for c in train_step._configs(settings) if c.get("image_size") == 1008]
    assert at_1008 == [("all-attn", None), ("all-attn", train_step.MALLOC_MMAP_THRESHOLD), ("full", train_step.MALLOC_MMAP_THRESHOLD)]


@pytest.mark.parametrize("round_s,budget_s,expected", [
    (0.5, 20.0, 40),  # cheap case: as many rounds as fit
    (0.1, 20.0, 41),  # capped
    (5.0, 20.0, 9),  # expensive case: never fewer than the minimum
    (0.5, 0.0, 9),  # no budget (quick runs): the minimum
])
def test_repeats_for_budget(round_s, budget_s, expected):
    from benchmarks.common import repeats_for_budget

    assert repeats_for_budget(round_s, budget_s, minimum=9, maximum=41) == expected


def test_interleaved_times_fills_the_budget_with_rounds():
    import time as time_module

    import torch

    from benchmarks.common import Settings, interleaved_times

    settings = Settings(quick=False, device=torch.device("cpu"), threads=1, repeats=3, warmup=1)
    calls = {"a": 0, "b": 0}

    def variant(name):
        def run():
            calls[name] += 1
            time_module.sleep(0.002)
        return run

    variants = {"a": variant("a"), "b": variant("b")}
    without = interleaved_times(variants, settings)
    assert [len(v) for v in without.values()] == [3, 3]
    with_budget = interleaved_times(variants, settings, budget_s=0.2, max_repeats=12)
    counts = {len(v) for v in with_budget.values()}
    assert len(counts) == 1 and 3 < counts.pop() <= 12


def test_saved_by_module_attributes_each_storage_once_to_the_innermost_module():
    import torch
    from torch import nn

    from benchmarks.activations import saved_by_module

    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU()), nn.Linear(8, 2))
    x = torch.randn(3, 4, requires_grad=True)
    out, saved = saved_by_module(model, lambda: (model(x) ** 2).sum())
    by_module = {name: (shape, n_bytes) for name, shape, n_bytes in saved}
    assert by_module["0"] == ((3, 4), 3 * 4 * 4)  # the first linear keeps its input
    assert by_module["1.0"] == ((3, 8), 3 * 8 * 4)  # ReLU keeps its output; the second linear's input is that storage
    assert by_module[""] == ((3, 2), 3 * 2 * 4)  # the square, outside any module, keeps the model's output
    assert len(saved) == 3 and out.requires_grad  # the weights the linears save are parameters: left out
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks  # hooks removed


def test_tally_sums_parts_and_finds_the_largest_tensor():
    from benchmarks.activations import OUTSIDE, tally

    saved = [("transformer.decoder", (24, 400, 5184), 100), ("transformer.decoder", (24, 400, 5184), 100),
             ("transformer.decoder.layers.0.cross_attn", (2, 3), 10), ("", (9, 16), 50),
             ("backbone.vision_backbone.trunk.blocks.3", (1, 72, 72, 1024), 40)]
    parts = tally(saved)
    # largest first; a part is a name's first three components, so the decoder's layers are a part of their own
    assert list(parts) == ["transformer.decoder", OUTSIDE, "backbone.vision_backbone.trunk", "transformer.decoder.layers"]
    decoder = parts["transformer.decoder"]
    assert decoder["bytes"] == 200 and decoder["tensors"] == 2
    assert decoder["largest_shape"] == [24, 400, 5184] and decoder["largest_count"] == 2
    assert parts[OUTSIDE]["bytes"] == 50


def test_quick_activations(quick_results):
    body = json.loads((quick_results / "activations.json").read_text(encoding="utf-8"))["result"]
    (row,) = body["rows"]
    assert row["size"] == "tiny" and row["saved_bytes"] > 0
    assert sum(part["bytes"] for part in row["parts"].values()) == row["saved_bytes"]
    assert "transformer.decoder" in row["parts"]
    readme = (quick_results / "README.md").read_text(encoding="utf-8")
    assert "activation memory goes" in readme and "| transformer.decoder |" in readme


def test_committed_results_readme_is_what_the_code_generates(tmp_path):
    """``benchmarks/results/README.md`` must come from the JSON files beside it and the report code as it stands."""
    import shutil

    from benchmarks.report import write_readme

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    for path in results.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    generated = write_readme(tmp_path).read_text(encoding="utf-8")
    assert generated == (results / "README.md").read_text(encoding="utf-8"), \
        "benchmarks/results/README.md is stale: regenerate it with benchmarks.report.write_readme"


def test_layers_budget_scale_shrinks_full_budgets_and_rejects_bad_values(monkeypatch):
    from benchmarks.common import Settings

    full = Settings(quick=False, device=torch.device("cpu"), threads=1, repeats=5, warmup=1)
    quick = dataclasses.replace(full, quick=True)
    monkeypatch.delenv("BENCH_LAYERS_BUDGET_SCALE", raising=False)
    assert lora_layers._budget(full, 20.0) == 20.0
    monkeypatch.setenv("BENCH_LAYERS_BUDGET_SCALE", "0.15")
    assert lora_layers._budget(full, 20.0) == pytest.approx(3.0)
    assert lora_layers._budget(quick, 20.0) == 0.0  # quick runs keep the requested repeats
    for bad in ("fast", "-1", "nan"):
        monkeypatch.setenv("BENCH_LAYERS_BUDGET_SCALE", bad)
        with pytest.raises(ValueError, match="BENCH_LAYERS_BUDGET_SCALE"):
            lora_layers._budget(full, 20.0)


def test_merged_goals_are_two_sided():
    def merged(ratio):
        return {mode: {"ratio": {"merged": ratio, "unloaded": ratio}} for mode in ("train", "inference")}

    goals = lora_layers.evaluate_goals([], [merged(1.01), merged(0.99)], [])
    assert goals["merged_vs_base"]["met"] is True and goals["merged_vs_base"]["cases_met"] == 4
    goals = lora_layers.evaluate_goals([], [merged(1.01), merged(0.95)], [])  # 5 % faster is as wrong as 5 % slower
    assert goals["merged_vs_base"]["met"] is False and goals["merged_vs_base"]["cases_met"] == 2
    assert goals["merged_vs_base"]["worst"] == pytest.approx(0.95) and goals["unloaded_vs_base"]["met"] is False
    assert lora_layers._limit_text(goals["merged_vs_base"]) == "0.98-1.02"
    assert lora_layers._limit_text(lora_layers.evaluate_goals([], [], [])["mha_vs_peft"]) == "<= 1.00"
    assert lora_layers._verdict(lora_layers.evaluate_goals([], [], [])["mha_vs_peft"]) == "not measured"


def test_layers_report_of_a_gpu_run_writes_its_own_plot(tmp_path):
    committed = json.loads((Path(__file__).resolve().parents[1] / "benchmarks/results/lora_layers.json").read_text(encoding="utf-8"))
    committed["settings"]["device"] = "cuda:0"
    section = lora_layers.report(committed, tmp_path)
    assert (tmp_path / "lora_layers_cuda.png").is_file() and not (tmp_path / "lora_layers.png").exists()
    assert "(lora_layers_cuda.png)" in section and section.startswith(f"## {lora_layers.TITLE} (GPU)")


def test_ratios_pair_runs_of_the_same_batch_and_goals_read_batch_1():
    gib = 2**30

    def row(preset, batch, cuda_peak_gib, frozen="float32"):
        config = {"size": "full", "preset": preset, "act_ckpt": True, "image_size": 1008, "device": "cuda",
                  "frozen_dtype": frozen, "batch_size": batch}
        return {"config": config, "status": "ok", "peak_rss": 4 * gib, "cuda_peak_bytes": cuda_peak_gib * gib, "s_per_step": 1.0, "text_cache": preset != "full"}

    rows = [row("all-attn", 1, 4.0, "bfloat16"), row("full", 1, 16.0), row("all-attn", 2, 6.0, "bfloat16"), row("full", 2, 21.0)]
    by_batch = {entry["batch_size"]: entry for entry in train_step.ratios(rows)}
    assert by_batch[1]["full_over_lora_memory"] == pytest.approx(4.0)
    assert by_batch[2]["full_over_lora_memory"] == pytest.approx(3.5)
    goals = train_step.goals(rows)
    assert goals["full_over_lora_memory"]["value"] == pytest.approx(4.0)
    assert goals["lora_peak_gb_1008_cuda"]["value"] == pytest.approx(4.0 * gib / 1e9)
    rows[0]["cuda_peak_bytes"] = 9 * gib  # batch 1 over the limit: batch 2's smaller figure must not stand in for it
    rows[2]["cuda_peak_bytes"] = 5 * gib
    assert train_step.goals(rows)["lora_peak_gb_1008_cuda"]["met"] is False
    # the goal is read in the trainer's default setup: a run without checkpointing does not stand in for it
    rows[0]["config"]["act_ckpt"] = False
    assert train_step.goals(rows)["lora_peak_gb_1008_cuda"]["met"] is None
    rows.append(row("all-attn", 1, 3.0, "bfloat16"))
    rows[-1]["config"]["frozen_dtype"] = "float32"  # nor one that keeps the frozen base in fp32
    assert train_step.goals(rows)["lora_peak_gb_1008_cuda"]["met"] is None
