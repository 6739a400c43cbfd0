"""Reports: what a conversion or an inspection found, as text for people and as a dict for JSON."""
from __future__ import annotations

from dataclasses import dataclass, field

from sam3_lora_kit.data.quirks import Quirk


@dataclass
class SplitStats:
    """Counts for one split, before (``_in``) and after (``_out``) cleaning."""

    images_in: int = 0
    images_out: int = 0
    instances_in: int = 0
    instances_out: int = 0
    per_class: dict[str, int] = field(default_factory=dict)  # instances out per class name

    def to_dict(self) -> dict:
        return {"images_in": self.images_in, "images_out": self.images_out, "instances_in": self.instances_in,
                "instances_out": self.instances_out, "per_class": dict(self.per_class)}


@dataclass
class DatasetReport:
    """What is in a dataset: splits, classes, quirks (the doctor's report; a conversion adds ``dst``)."""

    src: str
    format: str
    categories: list[str] = field(default_factory=list)  # output names; id k is categories[k-1]
    splits: dict[str, SplitStats] = field(default_factory=dict)
    quirks: list[Quirk] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def fatal(self) -> bool:
        """True when the dataset cannot be used as it is."""
        return any(q.severity == "fatal" for q in self.quirks)

    def total(self, key: str) -> int:
        """Sum of ``key`` (e.g. ``"instances_out"``) over splits."""
        return sum(getattr(s, key) for s in self.splits.values())

    def quirk_counts(self) -> dict[str, int]:
        return {q.code: q.count for q in self.quirks}

    def to_dict(self) -> dict:
        return {"src": self.src, "format": self.format, "categories": list(self.categories),
                "splits": {k: v.to_dict() for k, v in self.splits.items()},
                "quirks": [q.to_dict() for q in self.quirks], "fatal": self.fatal,
                "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        """A few lines for a terminal or a notebook."""
        lines = [f"{self.src} ({self.format}): {self.total('images_out')} images, "
                 f"{self.total('instances_out')} instances, {len(self.categories)} classes"]
        for name, s in self.splits.items():
            lines.append(f"  {name:<6} images {s.images_in:>5} -> {s.images_out:<5} "
                         f"instances {s.instances_in:>6} -> {s.instances_out}")
        if self.categories:
            lines.append("  classes: " + ", ".join(
                f"{k}:{name!r} ({sum(s.per_class.get(name, 0) for s in self.splits.values())})"
                for k, name in enumerate(self.categories, 1)))
        for q in self.quirks:
            lines.append(f"  [{q.severity}] {q.code} x{q.count}: {q.message}")
            lines.extend(f"      e.g. {e}" for e in q.examples)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class ConversionReport(DatasetReport):
    """A ``DatasetReport`` plus where the clean COCO dataset was written."""

    dst: str = ""

    def to_dict(self) -> dict:
        return {**super().to_dict(), "dst": self.dst}

    def summary(self) -> str:
        return super().summary() + f"\n  written to {self.dst}"
