#!/usr/bin/env python3
"""The kit's two commands: ``python3 kit.py demo`` and ``python3 kit.py test``.

Each creates (or reuses) a virtual environment in ``.venv``, installs the kit with its
``dev`` extra when ``pyproject.toml`` changed since the last install, then runs:

- ``demo``: the main job, the demo pipeline on the bundled sample (``sam3_lora_kit.demo``);
- ``test``: the whole test suite, pytest over ``tests/`` and nbval (lax) over ``notebooks/``.

Only the standard library is used here, so a fresh machine needs nothing but Python 3.11+ (Pillow 13, pinned for the sample images, needs 3.11).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("KIT_VENV", ROOT / ".venv"))
STAMP = VENV / ".kit-install-stamp"


def _venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _install_fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> Path:
    """Create ``.venv`` if needed and (re)install the kit when its dependencies changed."""
    if sys.version_info < (3, 11):
        sys.exit(f"kit.py: Python 3.11+ is needed, this is {sys.version.split()[0]}")
    python = _venv_python()
    if not python.exists():
        print(f"kit.py: creating a virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _install_fingerprint():
        return python
    print("kit.py: installing the kit and its dependencies (a few minutes the first time)", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(_install_fingerprint())
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    python = ensure_venv()
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0")
    if command == "demo":
        args = [str(python), "-m", "sam3_lora_kit.demo", *rest]
    else:
        args = [str(python), "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "tests", "notebooks", *rest]
    return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
