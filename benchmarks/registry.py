"""The benchmarks ``python -m benchmarks`` knows, in the order it runs them.

To add one: write ``benchmarks/<name>.py`` with ``NAME``, ``TITLE``, ``SOURCES`` (what its figures
depend on, see ``benchmarks/provenance.py``), ``available()``, ``run()`` and ``report()`` (see
``benchmarks/lora_layers.py``) and list its module here.
"""
from __future__ import annotations

import importlib
from types import ModuleType

BENCHMARKS = ("benchmarks.lora_layers", "benchmarks.lora_profile", "benchmarks.attention", "benchmarks.train_step",
              "benchmarks.activations", "benchmarks.sam3_presets", "benchmarks.converter", "benchmarks.notebooks")


def load(names: list[str] | None = None) -> list[ModuleType]:
    """The benchmark modules, all or those whose ``NAME`` is in ``names`` (unknown names raise)."""
    modules = [importlib.import_module(path) for path in BENCHMARKS]
    if names:
        known = {module.NAME for module in modules}
        unknown = sorted(set(names) - known)
        if unknown:
            raise SystemExit(f"benchmarks: unknown benchmark {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        modules = [module for module in modules if module.NAME in names]
    return modules
