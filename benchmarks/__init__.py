"""Measured costs of the kit, side by side with what a user would pick instead.

``python -m benchmarks [--quick] [--only NAME]`` runs every benchmark this machine can run,
writes ``benchmarks/results/<name>.json`` and regenerates ``benchmarks/results/README.md``
(tables) and ``benchmarks/results/*.png`` (plots). Each benchmark is a module listed in
``benchmarks.registry.BENCHMARKS`` exposing ``NAME``, ``TITLE``, ``available() -> str | None``
(why it cannot run here, or None), ``run(settings) -> dict`` and ``report(result, out_dir)
-> str`` (its Markdown section, plots written beside it); ``QUICK = False`` keeps a module out
of ``--quick``.

- ``lora_layers``: LoRALinear / LoRAMultiheadAttention against PEFT and the frozen base;
- ``train_step``: one training step of SAM 3, LoRA presets against full fine-tuning (peak
  memory, seconds per step, memory model); the full-size model only outside ``--quick``;
- ``sam3_presets``: adapter size and trainable share per preset against the checkpoint;
- ``converter``: ``sam3-lora convert`` against supervision's loaders + COCO export;
- ``notebooks``: each notebook's wall time under ``pytest --nbval-lax`` (not in ``--quick``).
"""
