"""The errors a training run raises; each message is one line that says what to do."""
from __future__ import annotations

__all__ = ["TrainError", "CheckpointError", "OutputDirError", "NonFiniteLossError", "TrainOutOfMemoryError"]


class TrainError(RuntimeError):
    """A training run that cannot start or go on."""


class CheckpointError(TrainError):
    """A checkpoint that cannot be read, or was made for another model, preset or rank."""


class OutputDirError(TrainError):
    """An output folder that cannot be written (read-only, not a folder, or too little free space)."""


class NonFiniteLossError(TrainError):
    """The loss or the gradients became NaN or infinite; the last good checkpoint is kept."""


class TrainOutOfMemoryError(TrainError, MemoryError):
    """The device ran out of memory; the message says the image size, batch, preset, peak memory and what to lower."""
