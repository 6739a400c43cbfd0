"""Read an export and clean it image by image: the part the converter and the doctor share."""
from __future__ import annotations

import hashlib
import itertools
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from sam3_lora_kit.data.clean import CleanImage, clean_image
from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import Reader
from sam3_lora_kit.data.report import DatasetReport, SplitStats

_ROBOFLOW_SOURCE = re.compile(r"^(?P<source>.+)\.rf\.[0-9a-f]{16,}\.[A-Za-z]+$")
_GENERIC_NAME = re.compile(r"^(?:(?:class|cls|category|cat|label|object|obj|item|type)[\s_-]*)?\d+$", re.I)
_NUMBERED_WORD = re.compile(r"\b(?:class|cls|category|label|object|type)[\s_-]*\d+\b", re.I)


def poor_prompt_reason(name: str) -> str | None:
    """Why ``name`` makes a poor text prompt for SAM 3, or None when it reads like words."""
    stripped = name.strip()
    if not stripped:
        return "empty name"
    if _GENERIC_NAME.match(stripped):
        return "a number or a generic label with a number"
    if _NUMBERED_WORD.search(stripped):
        return "contains a generic numbered label (describe the object instead)"
    if len(stripped) < 2:
        return "a single character"
    if not any(c.isalpha() for c in stripped):
        return "no letters"
    if stripped != name:
        return "leading or trailing spaces"
    return None


@dataclass
class SplitTracker:
    """Finds images shared between splits: identical bytes, or one Roboflow source image."""

    by_hash: dict[bytes, str] = field(default_factory=dict)  # sha256 digest -> "split/file"
    by_source: dict[str, tuple[str, str]] = field(default_factory=dict)  # source -> (split, file)
    names: dict[tuple[str, str], str] = field(default_factory=dict)  # (split, folded name) -> the first name written
    renamed: set[tuple[str, str]] = field(default_factory=set)  # keys of ``names`` that a rename made
    written: dict[tuple[str, str], str] = field(default_factory=dict)  # (split, export's name) -> name written

    def portable_name(self, split: str, file_name: str, quirks: QuirkLog) -> str:
        """``file_name``, or a new one where another name of ``split`` differs from it only in case.

        A case-insensitive file system (macOS's and Windows' defaults; macOS also ignores the
        Unicode normalisation form) may keep one file of two such names, so a converted dataset
        copied there would lose an image: the later one is renamed ``<stem>-2<suffix>`` (or
        ``-3``, ...), as is a name that an earlier rename took. An exact repeat of an export name
        gets the name its first occurrence got (the writer refuses it).
        """
        done = self.written.get((split, file_name))
        if done is not None:
            return done
        key = (split, _folded(file_name))
        first = self.names.setdefault(key, file_name)
        result = file_name
        if first != file_name or key in self.renamed:
            path = PurePosixPath(file_name)
            for number in itertools.count(2):
                if path.suffix or not path.name.startswith("."):
                    result = str(path.with_name(f"{path.stem}-{number}{path.suffix}"))
                else:  # ".JPG": keep the name's end, which is its extension
                    result = str(path.with_name(f"_{number}{path.name}"))
                if (split, _folded(result)) not in self.names:
                    break
            why = f"an earlier rename took {first}" if key in self.renamed else f"may be one file with {first}"
            self.names[(split, _folded(result))] = result
            self.renamed.add((split, _folded(result)))
            quirks.add("case_only_name", f"{split}/{file_name} -> {result} ({why})")
        self.written[(split, file_name)] = result
        return result

    def add(self, split: str, path: Path, file_name: str, quirks: QuirkLog, data: bytes | None = None) -> None:
        """Note the image ``path`` (its bytes ``data`` when already read) of ``split``."""
        digest = hashlib.sha256(path.read_bytes() if data is None else data).digest()  # sha256: hardware-accelerated
        here = f"{split}/{file_name}"
        other = self.by_hash.setdefault(digest, here)
        if other != here and other.split("/", 1)[0] != split:
            quirks.add("shared_between_splits", f"{other} = {here}")
        match = _ROBOFLOW_SOURCE.match(file_name if "/" not in file_name else Path(file_name).name)
        if match:
            seen = self.by_source.setdefault(match["source"], (split, file_name))
            if seen[0] != split:
                quirks.add("same_source_between_splits", f"{seen[0]}/{seen[1]} ~ {here}")


def _folded(name: str) -> str:
    """``name`` as a case- and normalisation-insensitive file system compares it (Unicode caseless matching)."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


# What each data-losing quirk is, said as a problem (the quirk messages say what the lenient mode did).
STRICT_PROBLEMS = {
    "short_polygon": "polygon with fewer than 3 points",
    "empty_mask": "annotation whose mask is empty after clipping",
    "missing_image": "image listed but missing on disk",
    "orphan_label": "label file without an image",
}


def check_strict(quirks: QuirkLog, before: dict[str, int]) -> None:
    """Raise on the first new quirk that lost data (used with ``strict=True``)."""
    for quirk in quirks.sorted():
        if quirk.severity in ("dropped", "fatal") and quirk.count > before.get(quirk.code, 0):
            example = quirk.examples[-1] if quirk.examples else "export"
            problem = STRICT_PROBLEMS.get(quirk.code, quirk.message)
            raise DataError(example, f"{problem} (an error in strict mode; without --strict it is dropped and reported)")


def iter_split(reader: Reader, split: str, stats: SplitStats, tracker: SplitTracker, quirks: QuirkLog,
               strict: bool = False) -> Iterator[tuple[Path, CleanImage]]:
    """Clean images of ``split`` one at a time, counting into ``stats``; yields (source file, clean image)."""
    for raw in reader.iter_images(split):
        before = {q.code: q.count for q in quirks.quirks.values()} if strict else {}
        stats.images_in += 1
        stats.instances_in += len(raw.annotations)
        image = clean_image(raw, quirks)
        if strict:
            check_strict(quirks, before)
        if image is None:
            continue
        tracker.add(split, raw.path, image.file_name, quirks, image.data)  # the export's name: what the user finds
        written = tracker.portable_name(split, image.file_name, quirks)
        if written != image.file_name:
            image.file_name, image.export_name = written, image.file_name
        stats.images_out += 1
        stats.instances_out += len(image.annotations)
        for ann in image.annotations:
            stats.per_class[ann["category"]] = stats.per_class.get(ann["category"], 0) + 1
        yield raw.path, image


def finish_report(report: DatasetReport, quirks: QuirkLog, require_train: bool = True) -> None:
    """Add the dataset-wide quirks (class usage, prompt names) and copy the quirks into ``report``.

    ``require_train``: a train split left without images (all missing or dropped) is fatal.
    """
    used_in = {name: [s for s, st in report.splits.items() if st.per_class.get(name)] for name in report.categories}
    for name, splits in used_in.items():
        if not splits:
            quirks.add("unused_category", repr(name))
        elif len(splits) == 1 and len(report.splits) > 1:
            quirks.add("class_in_one_split", f"{name!r} only in {splits[0]}")
        reason = poor_prompt_reason(name)
        if reason:
            quirks.add("poor_prompt_name", f"{name!r}: {reason}")
    if report.total("images_out") == 0:
        quirks.add("no_images", report.src)
    elif require_train and "train" in report.splits and report.splits["train"].images_out == 0:
        quirks.add("empty_train_split", f"{report.src} (train/: {report.splits['train'].images_in} images listed, none usable)")
    report.quirks = quirks.sorted()
