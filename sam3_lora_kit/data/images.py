"""Image files: their real size, and a full decode that turns any failure into a ``DataError``."""
from __future__ import annotations

from pathlib import Path

from sam3_lora_kit.data.errors import DataError


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    if path.stat().st_size == 0:
        raise DataError(path, "image file is empty")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(path, "not an image (cannot identify the format)") from None
    except OSError as error:
        raise DataError(path, f"image cannot be opened ({error})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    if not path.is_file():
        raise DataError(path, "image missing")
    with _open(path) as image:
        return image.size


def check_image(path: Path) -> tuple[int, int]:
    """Decode ``path`` fully (catching truncated files) and return its (width, height)."""
    from PIL import Image

    with _open(path) as image:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(path, f"image does not decode ({error})") from None
        return image.size
