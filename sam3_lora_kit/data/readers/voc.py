"""Pascal VOC exports: one XML per image in each split folder, read by tag name, never by position.

``<bndbox>`` values are 1-based inclusive pixel indices (the VOC devkit convention, as
supervision reads them): the box in pixels is ``(xmin - 1, ymin - 1, xmax, ymax)``.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.paths import (IMAGE_SUFFIXES, SPLIT_NAMES, check_disk_name, check_relative_name,
                                      find_split_dir, glob_files, safe_join, safe_lookup)
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import RawAnnotation, RawImage


def parse_xml(path: Path) -> ET.Element:
    """Parse ``path``; refuse DTDs (entity tricks) and report parse errors on one line."""
    with open(path, "rb") as file:  # Path.read_bytes without its wrappers
        data = file.read()
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DataError(path, "XML with a DOCTYPE or ENTITY declaration is refused")
    try:
        return ET.fromstring(data)
    except ET.ParseError as error:
        raise DataError(path, f"not valid XML ({error})") from None


def _text(element: ET.Element, tag: str, path: Path, what: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(path, f"{what} lacks <{tag}>")
    return child.text.strip()


def _number(element: ET.Element, tag: str, path: Path, what: str) -> float:
    """The number in child ``tag``; a missing, empty, non-numeric or infinite one raises (``_checked_number``)."""
    child = element.find(tag)
    try:
        value = float(child.text)  # float() ignores surrounding whitespace as str.strip() does
    except (AttributeError, TypeError, ValueError):
        return _checked_number(element, tag, path, what)
    return value if math.isfinite(value) else _checked_number(element, tag, path, what)


def _checked_number(element: ET.Element, tag: str, path: Path, what: str) -> float:
    text = _text(element, tag, path, what)
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, f"<{tag}> of {what} is not a number ({text!r})") from None
    if not math.isfinite(value):
        raise DataError(path, f"<{tag}> of {what} is not finite")
    return value


def _size_value(size: ET.Element | None, tag: str, path: Path) -> int:
    """``<size><tag>`` as an int; 0 where ``<size>`` or ``<tag>`` is missing or empty (the image file decides)."""
    child = size.find(tag) if size is not None else None
    if child is None or child.text is None or not child.text.strip():
        return 0
    return int(_number(size, tag, path, "<size>"))


def read_voc_file(path: Path) -> tuple[str | None, int, int, list[tuple[str, tuple[float, float, float, float]]]]:
    """(filename, width, height, [(name, (x, y, w, h))]) from one VOC XML file."""
    root = parse_xml(path)
    if root.tag != "annotation":
        raise DataError(path, f"root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")  # missing or empty: 0, read from the image file like a zero size
    width, height = _size_value(size, "width", path), _size_value(size, "height", path)
    filename = root.findtext("filename")
    objects = []
    for index, obj in enumerate(root.findall("object"), 1):
        what = f"object {index}"
        name = _text(obj, "name", path, what)
        box = obj.find("bndbox")
        if box is None:
            raise DataError(path, f"{what} lacks <bndbox>")
        x0, x1 = _number(box, "xmin", path, what), _number(box, "xmax", path, what)
        y0, y1 = _number(box, "ymin", path, what), _number(box, "ymax", path, what)
        if x1 < x0 or y1 < y0:
            raise DataError(path, f"{what} has a negative size (xmax < xmin or ymax < ymin)")
        objects.append((name, (x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1)))
    return (filename.strip() if filename else None), width, height, objects


VocRecord = tuple[str | None, int, int, list[tuple[str, tuple[float, float, float, float]]]]


class VocReader:
    """Reads Pascal VOC exports: every ``*.xml`` in each split folder describes one image.

    VOC declares no class list, so ``categories()`` reads every XML first; it keeps what it read
    (file name, size and boxes: a few hundred bytes an image, never pixels) for ``iter_images``,
    which hands each record on once, so each file is parsed once.
    """

    format = "voc"

    def __init__(self, root: Path, quirks: QuirkLog) -> None:
        self.root, self.quirks = root, quirks
        self._dirs = {s: d for s in SPLIT_NAMES if (d := find_split_dir(root, s)) and glob_files(d, "*.xml")}
        self._xml: dict[str, list[str]] = {}  # split -> XML file names, sorted
        self._parsed: dict[tuple[str, str], VocRecord] = {}  # (split, XML name) -> what categories() read

    def splits(self) -> list[str]:
        return list(self._dirs)

    def _xml_files(self, split: str) -> list[str]:
        if split not in self._xml:
            self._xml[split] = [p.name for p in glob_files(self._dirs[split], "*.xml")]  # one folder: by name
        return self._xml[split]

    def categories(self) -> list[str]:
        """Every object name over all splits, sorted (VOC declares no class list)."""
        names: set[str] = set()
        for split, folder in self._dirs.items():
            for xml_name in self._xml_files(split):
                record = self._parsed[split, xml_name] = read_voc_file(folder / xml_name)
                names.update(name for name, _ in record[3])
        return sorted(names)

    def _image_path(self, folder: Path, xml: Path, filename: str | None) -> tuple[Path, str]:
        """The image an XML describes and its name relative to the split folder (POSIX)."""
        if filename:
            path, is_file = safe_lookup(folder, filename, xml)
            if is_file:  # path is folder / the clean name: relative to folder, the clean name itself
                return path, check_relative_name(filename, xml)
        stem = str(xml)[: -len(xml.suffix)] if xml.suffix else str(xml)
        for suffix in IMAGE_SUFFIXES:  # the image next to the XML, with the same stem
            if os.path.isfile(candidate := stem + suffix):
                path = Path(candidate)
                return path, check_disk_name(path)  # in the split folder, as the XML is
        path = safe_join(folder, filename, xml) if filename else xml.with_suffix(".jpg")
        return path, path.relative_to(folder).as_posix()

    def iter_images(self, split: str) -> Iterator[RawImage]:
        folder = self._dirs[split]
        for xml_name in self._xml_files(split):
            xml = folder / xml_name
            parsed = self._parsed.pop((split, xml_name), None)
            filename, width, height, objects = parsed if parsed is not None else read_voc_file(xml)
            path, file_name = self._image_path(folder, xml, filename)
            where = str(xml)
            record = RawImage(file_name=file_name, path=path, where=where,
                              width=width if width > 0 else None, height=height if height > 0 else None)
            for index, (name, box) in enumerate(objects, 1):
                record.annotations.append(RawAnnotation(name, None, box, f"{where} (object {index})"))
            yield record
