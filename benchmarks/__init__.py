"""Measured costs of the kit, side by side with what a user would pick instead.

``python -m benchmarks [--quick] [--only NAME]`` runs every benchmark this machine can run,
writes ``benchmarks/results/<name>.json`` and regenerates ``benchmarks/results/README.md``
(tables) and ``benchmarks/results/*.png`` (plots). Each benchmark is a module listed in
``benchmarks.registry.BENCHMARKS`` exposing ``NAME``, ``TITLE``, ``available() -> str | None``
(why it cannot run here, or None), ``run(settings) -> dict`` and ``report(result, out_dir)
-> str`` (its Markdown section, plots written beside it).
"""
