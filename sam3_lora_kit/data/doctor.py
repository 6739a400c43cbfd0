"""The data doctor: what is in a dataset (a Roboflow export or a clean COCO folder) and what is wrong with it."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from sam3_lora_kit.data.convert import archive_path_text, opened_export
from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.paths import SPLIT_NAMES
from sam3_lora_kit.data.pipeline import SplitTracker, finish_report, iter_split
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.readers import make_reader
from sam3_lora_kit.data.report import DatasetReport, SplitStats


def inspect_dataset(path: str | Path, format: str = "auto") -> DatasetReport:
    """Read every split of ``path`` without writing anything and report counts and quirks.

    Problems that stop a split from being read are reported as ``fatal`` quirks (the report's
    ``fatal`` is then True) instead of being raised, so one report lists them all.
    """
    started = time.perf_counter()
    path = Path(path).expanduser().absolute()
    quirks = QuirkLog()
    report = DatasetReport(src=str(path), format=format)
    scratch = Path(tempfile.mkdtemp(prefix="sam3-lora-inspect-"))
    try:
        with opened_export(path, scratch) as root:
            reader = make_reader(root, format, quirks)
            report.format = reader.format
            splits = reader.splits()
            for split in SPLIT_NAMES:
                if split not in splits:
                    quirks.add("missing_split", split)
            if splits and "train" not in splits:
                quirks.add("no_train_split", str(path))
            try:
                report.categories = reader.categories()
            except DataError as error:
                quirks.add("unreadable", str(error))
            tracker = SplitTracker()
            for split in splits:
                stats = report.splits.setdefault(split, SplitStats())
                try:
                    for _ in iter_split(reader, split, stats, tracker, quirks):
                        pass
                except DataError as error:
                    quirks.add("unreadable", str(error))
    except DataError as error:
        quirks.add("unreadable", str(error))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if path.is_file():
        quirks.relabel(lambda text: archive_path_text(text, scratch, path))
    finish_report(report, quirks)
    report.seconds = time.perf_counter() - started
    return report
