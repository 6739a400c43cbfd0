"""A header-only check of plain JPEG files: their size without Pillow, when nothing in them could fail to decode.

``jpeg_size(data)`` walks the markers of a baseline (or extended sequential) Huffman JPEG, checks
each table and the frame the way libjpeg and Pillow do, and requires exactly one interleaved
scan ending in the EOI marker at the very end of the file. It returns ``(width, height)`` only
when Pillow would open and decode the file with that size; anything else (truncated,
progressive, CMYK, EXIF or MPO segments, junk between markers, a table libjpeg would refuse)
returns ``None`` and the caller decodes the file with Pillow, which gives the error message.
"""
from __future__ import annotations

import operator
import re
import sys

MAX_DIMENSION = 65500  # libjpeg's JPEG_MAX_DIMENSION
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # Pillow's Image.MAX_IMAGE_PIXELS (decompression-bomb warning)
LUMA_SAMPLING = b"\x11\x21\x12\x22"  # H << 4 | V of 4:4:4, 4:2:2, 4:4:0, 4:2:0; chroma always 1x1
CODE_WEIGHTS = tuple(1 << (16 - length) for length in range(1, 17))  # a code of that length, in 16-bit codes
SOF_MARKERS = (0xC0, 0xC1)  # baseline and extended sequential DCT, Huffman coded
_MARKER_IN_SCAN = rb"\xff[^\x00\xd0-\xd7]"  # a marker in entropy-coded data (not stuffing, not RSTn)


class _Tables:
    """What the header defined so far: quantisation and Huffman table slots, the frame."""

    def __init__(self) -> None:
        self.quant: set[int] = set()
        self.dc: set[int] = set()
        self.ac: set[int] = set()
        self.frame: tuple[int, int, list[tuple[int, int]]] | None = None  # width, height, [(id, quant table)]


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a plain, complete JPEG in ``data``; None when Pillow must decide."""
    n = len(data)
    if n < 8 or data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        return None
    tables = _Tables()
    pos = 2
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        end = pos + 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if end > n or end < pos + 4:
            return None
        segment = data[pos + 4:end]
        if marker == 0xDA:
            return _scan_ok(data, end, segment, tables)
        if not _segment_ok(marker, segment, tables):
            return None
        pos = end
    return None


def _segment_ok(marker: int, segment: bytes, tables: _Tables) -> bool:
    """True when the segment before the scan is well formed and one this check understands."""
    if 0xE0 <= marker <= 0xEF or marker == 0xFE:
        return _app_ok(marker, segment)
    if marker == 0xDB:
        return _dqt_ok(segment, tables.quant)
    if marker == 0xC4:
        return _dht_ok(segment, tables)
    if marker == 0xDD:
        return len(segment) == 2
    if marker in SOF_MARKERS and tables.frame is None:
        tables.frame = _frame(segment)
        return tables.frame is not None
    return False  # progressive, arithmetic, lossless, DNL, a second SOI or SOF, ...


def _app_ok(marker: int, segment: bytes) -> bool:
    """APPn and COM: refuse the segments Pillow parses in ways that can fail or change the image class."""
    if marker == 0xE0 and segment.startswith(b"JFIF"):
        return len(segment) >= 7
    if marker == 0xEE and segment.startswith(b"Adobe"):
        return len(segment) >= 7
    if marker == 0xE2 and segment.startswith(b"ICC_PROFILE\0"):
        return len(segment) >= 14
    if marker == 0xE2 and segment.startswith(b"MPF\0"):
        return False  # possibly an MPO file
    if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
        return False  # Pillow reads the EXIF resolution while opening
    if marker == 0xED and segment.startswith(b"Photoshop 3.0\0"):
        return False  # Pillow parses the resource blocks while opening
    return True


def _dqt_ok(segment: bytes, quant: set[int]) -> bool:
    """Quantisation tables: 8- or 16-bit, slots 0..3, lengths exact."""
    i, n = 0, len(segment)
    while i < n:
        precision, slot = segment[i] >> 4, segment[i] & 15
        if precision > 1 or slot > 3:
            return False
        i += 1 + 64 * (precision + 1)
        quant.add(slot)
    return i == n and n > 0


def _dht_ok(segment: bytes, tables: _Tables) -> bool:
    """Huffman tables: slots 0..3, at most 256 symbols, codes that fit (libjpeg's checks), DC symbols <= 15."""
    i, n = 0, len(segment)
    while i < n:
        if i + 17 > n:
            return False
        kind, slot = segment[i] >> 4, segment[i] & 15
        counts = segment[i + 1:i + 17]
        total = sum(counts)
        if kind > 1 or slot > 3 or total > 256 or i + 17 + total > n or not _codes_fit(counts):
            return False
        symbols = segment[i + 17:i + 17 + total]
        if kind == 0 and symbols and max(symbols) > 15:
            return False
        (tables.ac if kind else tables.dc).add(slot)
        i += 17 + total
    return n > 0


def _codes_fit(counts: bytes) -> bool:
    """libjpeg's canonical-code check (at each length the codes so far fit in that many bits).

    The codes assigned up to length l number ``sum(counts[i] << (l - i))``, a share of the l-bit
    codes that only grows with l; so checking the longest length, 16, checks them all.
    """
    return sum(map(operator.mul, counts, CODE_WEIGHTS)) < 1 << 16


def _frame(segment: bytes) -> tuple[int, int, list[tuple[int, int]]] | None:
    """(width, height, [(component id, quant table)]) of an 8-bit grey or 3-component frame with usual sampling."""
    if len(segment) < 6 or segment[0] != 8:
        return None
    height, width, count = (segment[1] << 8) | segment[2], (segment[3] << 8) | segment[4], segment[5]
    if count not in (1, 3) or len(segment) != 6 + 3 * count:
        return None
    if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION) or width * height > _max_pixels():
        return None
    ids, sampling, quant = segment[6::3], segment[7::3], segment[8::3]  # per component; sampling byte: H << 4 | V
    if sampling[0] not in (LUMA_SAMPLING if count == 3 else b"\x11") or sampling[1:] != b"\x11" * (count - 1):
        return None  # (these keep the blocks per MCU within libjpeg's limit of 10)
    if len(set(ids)) != count or max(quant) > 3:
        return None
    return width, height, list(zip(ids, quant))


def _max_pixels() -> int:
    """Pillow's decompression-bomb threshold (its current value when Pillow is loaded, else its default)."""
    image = sys.modules.get("PIL.Image")
    current = getattr(image, "MAX_IMAGE_PIXELS", None)
    return min(DEFAULT_MAX_PIXELS, current) if isinstance(current, int) else DEFAULT_MAX_PIXELS


def _scan_ok(data: bytes, start: int, segment: bytes, tables: _Tables) -> tuple[int, int] | None:
    """The one scan: every frame component, defined tables, sequential parameters, then only EOI."""
    if tables.frame is None:
        return None
    width, height, components = tables.frame
    count = segment[0] if segment else 0
    if count != len(components) or len(segment) != 4 + 2 * count:
        return None
    quant = dict(components)
    seen = set()
    for k in range(count):
        component, selectors = segment[1 + 2 * k], segment[2 + 2 * k]
        if component not in quant or component in seen or quant[component] not in tables.quant:
            return None
        if selectors >> 4 not in tables.dc or selectors & 15 not in tables.ac:
            return None
        seen.add(component)
    if segment[-3:] != b"\x00\x3f\x00":  # Ss = 0, Se = 63, Ah = Al = 0
        return None
    marker = re.compile(_MARKER_IN_SCAN).search(data, start)
    if marker is None or marker.start() != len(data) - 2:
        return None  # another scan, a DNL, fill bytes or data after the first EOI: let Pillow decide
    return width, height
