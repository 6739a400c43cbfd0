"""The install files agree, and the package imports without doing work."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _normalise(requirement: str) -> str:
    return requirement.strip().lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict)]
    assert len(pip_sections) == 1
    listed = {_normalise(r) for r in pip_sections[0]}
    assert listed == expected, f"only in environment.yml: {listed - expected}; only in pyproject.toml: {expected - listed}"


def test_python_version_agrees():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pythons = [d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons and tuple(int(x) for x in pythons[0].split("=")[1].split(".")) >= (3, 10)


def test_importing_the_package_does_not_import_sam3_or_matplotlib():
    code = "import sys, sam3_lora_kit; print('sam3' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 kit.py test" in readme and "python3 kit.py test" in ci
    assert "python3 kit.py demo" in readme


def test_readme_lora_snippet_runs_on_sam3(tmp_path, monkeypatch):
    """The README's "LoRA core in five lines" block, run as written on a (tiny) SAM 3 model."""
    import re

    from sam3_lora_kit.sam3 import build_sam3

    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"## The LoRA core in five lines\n+```python\n(.*?)```", readme, re.S).group(1)
    inject_line = next(line for line in snippet.splitlines() if "inject_lora(" in line)
    monkeypatch.chdir(tmp_path)
    fresh = build_sam3("tiny", device="cpu")
    exec("from sam3_lora_kit import inject_lora\n" + inject_line, {"model": fresh})  # injected the same way
    namespace = {"model": build_sam3("tiny", device="cpu"), "fresh_model_injected_the_same_way": fresh}
    exec(snippet, namespace)
    report = namespace["report"]
    assert any(row["name"].endswith("attn.qkv") for row in report.layers)
    assert any(row["name"].endswith("self_attn") for row in report.layers)
    assert (tmp_path / "adapter.safetensors").is_file()
