"""What every reader yields: images with raw annotations in pixels, before any cleaning."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol, Union

if TYPE_CHECKING:
    from sam3_lora_kit.data.images import CheckedImage

Polygons = list[list[float]]  # each polygon: [x0, y0, x1, y1, ...] in pixels (a reader may give float64 arrays)
Rle = dict  # {"size": [h, w], "counts": str | list[int]}


@dataclass
class RawAnnotation:
    """One instance as the export states it (pixels, not yet checked)."""

    category: str  # the class name, exactly as exported
    segmentation: Union[Polygons, Rle, None]  # polygons, RLE, or None for a box only
    bbox: tuple[float, float, float, float] | None  # (x, y, w, h) pixels, if the export gives one
    where: str  # file (and line) for messages
    iscrowd: int = 0


@dataclass
class RawImage:
    """One image of a split and its annotations."""

    file_name: str  # name in the output split folder (relative, POSIX)
    path: Path  # the file in the export (may be missing)
    where: str  # the annotation file describing it, for messages
    width: int | None = None  # as declared by the annotations
    height: int | None = None
    annotations: list[RawAnnotation] = field(default_factory=list)
    declares_size: bool = True  # False where the format takes the size from the image itself
    checked: CheckedImage | None = None  # the file already read and checked by the reader (YOLO needs its size)


class Reader(Protocol):
    """One export format: its splits, its classes and its images, read lazily."""

    format: str

    def splits(self) -> list[str]:
        """Splits present, in the order train, valid, test."""

    def categories(self) -> list[str]:
        """Every class name over all splits, in a stable order (phantom category excluded)."""

    def iter_images(self, split: str) -> Iterator[RawImage]:
        """Images of ``split``, one at a time."""
