"""Image files: their real size, and a decode that turns any failure into a ``DataError``."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.jpeg import jpeg_size


@dataclass
class CheckedImage:
    """An image file read once and checked: its bytes (held for one image at a time) and real size."""

    path: Path
    width: int
    height: int
    data: bytes = field(repr=False)


def _open(path: Path, data: bytes | None = None):
    from PIL import Image, UnidentifiedImageError

    if data is None:
        if path.stat().st_size == 0:
            raise DataError(path, "image file is empty")
        source = path
    elif not data:
        raise DataError(path, "image file is empty")
    else:
        source = io.BytesIO(data)
    try:
        return Image.open(source)
    except UnidentifiedImageError:
        raise DataError(path, "not an image (cannot identify the format)") from None
    except Image.DecompressionBombError as error:
        raise DataError(path, f"image cannot be opened ({error})") from None
    except OSError as error:
        raise DataError(path, f"image cannot be opened ({error})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    if not path.is_file():
        raise DataError(path, "image missing")
    with _open(path) as image:
        return image.size


def read_image(path: Path) -> CheckedImage:
    """Read ``path`` once, check it decodes (catching truncated or corrupt files) and return bytes and size.

    A plain, complete baseline JPEG is checked from its markers alone (``jpeg.jpeg_size``: the
    cases where Pillow would decode it with that size). Anything else goes through Pillow:
    JPEGs decoded at 1/8 scale (``Image.draft``: libjpeg still reads every entropy-coded block,
    so a truncated file still fails), other formats in full.
    """
    try:
        with open(path, "rb") as file:  # Path.read_bytes without its wrappers
            data = file.read()
    except IsADirectoryError:
        raise DataError(path, "image is a folder, not a file") from None
    except OSError as error:
        raise DataError(path, f"image cannot be read ({error.strerror})") from None
    size = jpeg_size(data)
    if size is not None:
        return CheckedImage(path, size[0], size[1], data)
    return _decode(path, data)


def _decode(path: Path, data: bytes) -> CheckedImage:
    """Pillow's check of ``data`` (the bytes of ``path``): open, then decode (JPEGs at 1/8 scale)."""
    from PIL import Image

    with _open(path, data) as image:
        width, height = image.size
        try:
            if image.format == "JPEG":
                image.draft(image.mode, (max(width // 8, 1), max(height // 8, 1)))
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise DataError(path, f"image does not decode ({error})") from None
    return CheckedImage(path, width, height, data)


def check_image(path: Path) -> tuple[int, int]:
    """Decode ``path`` (catching truncated files) and return its (width, height)."""
    checked = read_image(path)
    return checked.width, checked.height
