"""Every notebook opens the same way: title, learning goals, Colab badge, a Colab-only install cell,
and one ``parameters`` cell of plain annotated literals (what papermill overrides)."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BADGE = "https://colab.research.google.com/github/sam3-lora-kit/sam3-lora-kit/blob/main/notebooks/{name}"
TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _python(source: str) -> ast.Module:
    """The cell as Python, IPython's ``!`` and ``%`` lines turned into calls as Jupyter runs them."""
    from IPython.core.inputtransformer2 import TransformerManager

    return ast.parse(TransformerManager().transform_cell(source))


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_title_and_learning_goals(path):
    first = _cells(path)[0]
    text = _source(first)
    assert first["cell_type"] == "markdown" and re.match(rf"# {path.name[:2]} · \S", text), text[:80]
    heading = re.search(r"(By the end of this notebook you can:|\*\*You will learn to\*\*)\n((?:(?:\d+\.|-) .+\n?)+)", text)
    assert heading, f"{path.name}: no learning goals list under the title"
    assert len(heading.group(2).strip().splitlines()) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_opens_this_notebook(path):
    opening = "".join(_source(c) for c in _cells(path)[:2] if c["cell_type"] == "markdown")
    assert "colab-badge.svg" in opening and BADGE.format(name=path.name) in opening


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_runs_only_on_colab(path):
    code = [c for c in _cells(path) if c["cell_type"] == "code"]
    source = _source(code[0])
    body = _python(source).body
    assert [type(node) for node in body] == [ast.Import, ast.If], source
    assert ast.unparse(body[1].test) == "'google.colab' in sys.modules"
    assert "sam3-lora-kit" in source and "pip" in source and not body[1].orelse


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_annotated_literals(path):
    tagged = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0]["cell_type"] == "code"
    names = []
    for node in ast.parse(_source(tagged[0])).body:
        assert isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name), ast.unparse(node)
        kind = TYPES[ast.unparse(node.annotation)]
        value = ast.literal_eval(node.value)
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), ast.unparse(node)
        names.append(node.target.id)
    assert names and len(names) == len(set(names))
