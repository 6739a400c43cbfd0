"""Quirks: what was odd about an export, how often, with a few examples.

Each quirk code has a severity:
- ``info``: worth knowing, nothing changed (an image without annotations is a negative);
- ``fixed``: corrected without losing data (coordinates clipped, width/height corrected);
- ``dropped``: something was left out (a polygon with fewer than three points, a missing image);
- ``fatal``: the dataset cannot be used as it is (a file that does not parse).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

# code -> (severity, what it means and what the kit did)
QUIRK_KINDS: dict[str, tuple[str, str]] = {
    "phantom_category": ("fixed", "Roboflow's phantom category (id 0, supercategory 'none', unused) dropped"),
    "phantom_category_used": ("info", "the phantom-looking category id 0 is used by annotations, so it is kept"),
    "duplicate_category_name": ("fixed", "several category ids share one name; merged into one category"),
    "unused_category": ("info", "category declared but used by no annotation (kept)"),
    "class_in_one_split": ("info", "class appears in one split only (the class list is built from every split)"),
    "size_mismatch": ("fixed", "width/height in the annotations differ from the image file; corrected from the file"),
    "missing_size": ("fixed", "width/height missing from the annotations; read from the image file"),
    "clipped": ("fixed", "coordinates outside the image clipped to it"),
    "closing_point": ("fixed", "polygon repeats its first point at the end; the repeat removed"),
    "box_as_mask": ("fixed", "annotation without a segmentation: its box is used as the mask"),
    "rle_non_crowd": ("info", "RLE mask on an iscrowd=0 annotation (kept as RLE)"),
    "short_polygon": ("dropped", "polygon with fewer than 3 points dropped"),
    "empty_mask": ("dropped", "annotation whose mask is empty (after clipping) dropped"),
    "missing_image": ("dropped", "image listed but missing on disk; skipped (never invented)"),
    "negative_image": ("info", "image without annotations (kept as a negative example)"),
    "empty_label_file": ("info", "empty YOLO label file (image kept as a negative)"),
    "mixed_lines": ("info", "YOLO file mixes box lines and polygon lines"),
    "yaml_path_ignored": ("info", "data.yaml split path does not exist in the export; the conventional folder was used"),
    "names_count_mismatch": ("info", "data.yaml 'nc' differs from the number of names; names win"),
    "orphan_label": ("dropped", "label or annotation file without an image; skipped"),
    "missing_labels": ("dropped", "YOLO split has images but no labels folder (its images kept as negatives: check the export's layout)"),
    "background_class": ("info", "mask class treated as background (no instances)"),
    "missing_split": ("info", "split not present in the export"),
    "case_only_name": ("fixed", "file name differs from another of its split only in case (may be one file on macOS or "
                                "Windows): renamed on conversion, the export's name kept in the image's extra.name"),
    "linked_as_copy": ("info", "images from a .zip are copied, not linked"),
    "linked_into_output": ("info", "image lives in the output folder being replaced (a link would dangle): copied, not linked"),
    "old_output_left": ("info", "the output was replaced, but the old one could not be deleted: delete this folder"),
    "poor_prompt_name": ("info", "class name makes a poor SAM 3 text prompt; consider renaming"),
    "shared_between_splits": ("info", "identical image file in more than one split (leakage between splits)"),
    "same_source_between_splits": ("info", "augmented copies of one source image in more than one split"),
    "unreadable": ("fatal", "file cannot be read"),
    "no_images": ("fatal", "no images found"),
    "no_train_split": ("fatal", "no train/ split: nothing to train on"),
    "empty_train_split": ("fatal", "train/ split has no usable image: nothing to train on"),
}
SEVERITIES = ("info", "fixed", "dropped", "fatal")
MAX_EXAMPLES = 3


@dataclass
class Quirk:
    """One kind of quirk: its code, severity, count and a few examples."""

    code: str
    severity: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"code": self.code, "severity": self.severity, "message": self.message,
                "count": self.count, "examples": list(self.examples)}


@dataclass
class QuirkLog:
    """Counts quirks by code, keeping the first few examples of each."""

    quirks: dict[str, Quirk] = field(default_factory=dict)

    def add(self, code: str, example: str = "", count: int = 1) -> None:
        """Record ``count`` occurrences of ``code``; ``example`` says where (file, line, value)."""
        severity, message = QUIRK_KINDS[code]
        quirk = self.quirks.setdefault(code, Quirk(code, severity, message))
        quirk.count += count
        if example and len(quirk.examples) < MAX_EXAMPLES and example not in quirk.examples:
            quirk.examples.append(example)

    def relabel(self, rename: Callable[[str], str]) -> None:
        """Rewrite every example with ``rename`` (a temporary folder's path -> what the user gave)."""
        for quirk in self.quirks.values():
            quirk.examples = [rename(example) for example in quirk.examples]

    def count(self, code: str) -> int:
        return self.quirks[code].count if code in self.quirks else 0

    def has_severity(self, severity: str) -> bool:
        return any(q.severity == severity for q in self.quirks.values())

    def sorted(self) -> list[Quirk]:
        """Most severe first, then by code."""
        rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
        return sorted(self.quirks.values(), key=lambda q: (rank[q.severity], q.code))

    def __contains__(self, code: object) -> bool:
        return code in self.quirks
