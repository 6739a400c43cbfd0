"""The one error the data area raises on bad input: it names the file and the problem."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. ``str(error)`` is one line: ``<file>: <problem>``."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")
