"""``convert_roboflow``: a Roboflow export (folder or .zip) -> a clean COCO dataset, all or nothing.

Output: ``DST/<split>/_annotations.coco.json`` plus the images. Everything is written into a
temporary folder next to DST and renamed into place at the end; SRC is only read.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.file_writer import FileWriterProcess
from sam3_lora_kit.data.paths import (SPLIT_NAMES, check_no_escaping_links, find_split_dir, safe_extract_zip,
                                      written_by_kit)
from sam3_lora_kit.data.pipeline import SplitTracker, check_strict, finish_report, iter_split
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.readers import make_reader
from sam3_lora_kit.data.report import ConversionReport, SplitStats
from sam3_lora_kit.data.writer import SplitWriter


def export_root(folder: Path) -> Path:
    """The folder holding the splits: ``folder`` itself or its single subfolder (zips often wrap one)."""
    if any(find_split_dir(folder, s) for s in SPLIT_NAMES) or (folder / "data.yaml").is_file():
        return folder
    children = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return folder


def extracted_folder(scratch: Path) -> Path:
    """Where ``opened_export`` extracts a .zip inside ``scratch``."""
    return scratch / "source"


def archive_path_text(text: str, scratch: Path, archive: Path) -> str:
    """``text`` with paths inside the extracted copy of ``archive`` written as ``archive!inner/path``."""
    extracted = str(extracted_folder(scratch))
    return text.replace(extracted + os.sep, f"{archive}!").replace(extracted, f"{archive}!")


@contextmanager
def opened_export(src: Path, scratch: Path) -> Iterator[Path]:
    """The export folder to read: ``src`` itself, or a .zip safely extracted into ``scratch``.

    A ``DataError`` raised while reading an extracted zip names the file inside the zip
    (``export.zip!train/_annotations.coco.json``), not the temporary copy.
    """
    if not src.exists():
        raise DataError(src, "does not exist")
    if src.is_file():
        if src.suffix.lower() != ".zip":
            raise DataError(src, "expected an export folder or a .zip file")
        target = extracted_folder(scratch)
        target.mkdir()
        safe_extract_zip(src, target)
        try:
            yield export_root(target)
        except DataError as error:
            raise DataError(archive_path_text(error.path, scratch, src),
                            archive_path_text(error.problem, scratch, src)) from None
        return
    check_no_escaping_links(src)
    yield export_root(src)


def _check_targets(src: Path, dst: Path, overwrite: bool) -> None:
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents or dst_r in src_r.parents:
        raise DataError(dst, f"must not be inside the source or contain it ({src})")
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        raise DataError(dst, "exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise DataError(dst, "exists and is not empty (use overwrite=True or --overwrite)")
        stranger = next((p.name for p in sorted(dst.iterdir()) if not _kit_split(p)), None)
        if stranger is not None:
            raise DataError(dst, f"does not look like a converted dataset (it holds {stranger!r}), so overwrite "
                                 "will not delete it; choose another output folder")


def _kit_split(folder: Path) -> bool:
    """True for a split folder the converter wrote (what ``overwrite`` may delete)."""
    return folder.name in SPLIT_NAMES and folder.is_dir() and not folder.is_symlink() and written_by_kit(folder)


def _make_parents(dst: Path) -> list[Path]:
    """Make DST's missing parent folders; returns those this call made, nearest first."""
    missing = []
    for parent in dst.parents:
        if parent.exists() or parent.is_symlink():
            break
        missing.append(parent)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        _remove_if_empty(missing)
        blocker = next((p for p in reversed(dst.parents) if p.exists() and not p.is_dir()), dst.parent)
        raise DataError(blocker, f"is a file, so the output folder {dst} cannot be made there") from None
    except OSError as error:
        _remove_if_empty(missing)
        raise DataError(dst.parent, f"cannot be made ({error.strerror})") from None
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (nearest first) while they are empty: the parents a failed call made."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _replace(tmp_out: Path, dst: Path) -> Path | None:
    """Move the finished output into place; an existing DST is swapped out, then removed.

    If the swap fails, DST is left as it was and ``DataError`` names it. Returns the folder
    still holding the old DST when the new output is in place but the old one could not be
    deleted (the caller reports it), else None.
    """
    if not dst.exists():
        try:
            tmp_out.rename(dst)
        except OSError as error:
            raise DataError(dst, f"cannot be written ({error.strerror})") from None
        return None
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    try:
        dst.rename(old / "dst")
    except OSError as error:
        old.rmdir()
        raise DataError(dst, f"cannot be replaced ({error.strerror}); it was left as it was") from None
    try:
        tmp_out.rename(dst)
    except OSError as error:
        (old / "dst").rename(dst)  # put the old output back
        old.rmdir()
        raise DataError(dst, f"cannot be replaced ({error.strerror}); it was left as it was") from None
    try:
        shutil.rmtree(old)
    except OSError:
        return old
    return None


def convert_roboflow(src: str | Path, dst: str | Path, format: str = "auto", link: bool = False,
                     overwrite: bool = False, strict: bool = False, require_train: bool = True
                     ) -> ConversionReport:
    """Convert the Roboflow export ``src`` (folder or .zip) into a clean COCO dataset at ``dst``.

    ``format``: ``auto``, ``coco``, ``yolo``, ``voc`` or ``masks``. ``link``: link images instead of
    copying them (hard links where possible, else symbolic links). ``overwrite``: replace a
    non-empty ``dst`` holding only split folders this converter wrote (any other ``dst`` is refused,
    nothing deleted). ``strict``: raise on any quirk that loses data (missing image, dropped polygon).
    ``require_train``: refuse an export without ``train/``. Raises ``DataError`` (file and problem in
    one line) on bad input; then nothing is left at ``dst`` (nor parent folders it made) and ``src``
    is untouched.
    """
    started = time.perf_counter()
    src, dst = Path(src).expanduser().absolute(), Path(dst).expanduser().absolute()
    if not src.exists():
        raise DataError(src, "does not exist")
    _check_targets(src, dst, overwrite)
    made = _make_parents(dst)  # removed again if the conversion fails
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    except BaseException:
        _remove_if_empty(made)
        raise
    done = False
    try:
        # image copies are written by a child process, started first so that it starts while the export is
        # opened and read (None where none starts: then the writer's thread writes them)
        copier = nullcontext() if link else FileWriterProcess.start() or nullcontext()
        with copier as file_writer, opened_export(src, scratch) as root:
            quirks = QuirkLog()
            reader = make_reader(root, format, quirks)
            splits = reader.splits()
            if not splits:
                raise DataError(src, "empty export: no split with images and annotations found")
            if require_train and "train" not in splits:
                raise DataError(src, f"no train/ split (found only {', '.join(splits)}): nothing to train on")
            for split in SPLIT_NAMES:
                if split not in splits:
                    quirks.add("missing_split", split)
            if link and src.is_file():
                quirks.add("linked_as_copy", str(src))
                link = False
            report = ConversionReport(src=str(src), format=reader.format, dst=str(dst))
            report.categories = reader.categories()
            tracker = SplitTracker()
            out = scratch / "out"
            for split in splits:
                stats = report.splits.setdefault(split, SplitStats())
                keep_out = dst if link and dst.is_dir() else None  # what --overwrite deletes
                with SplitWriter(out / split, report.categories, link=link, keep_out=keep_out,
                                 file_writer=file_writer) as writer:
                    for source, image in iter_split(reader, split, stats, tracker, quirks, strict):
                        writer.add(source, image)
                    writer.finish()
                for number, source in enumerate(writer.copied_examples):  # the count once, then examples
                    quirks.add("linked_into_output", str(source), count=writer.copied_not_linked if number == 0 else 0)
            before = {}
            if src.is_file():
                quirks.relabel(lambda text: archive_path_text(text, scratch, src))
            finish_report(report, quirks, require_train)
            if strict:
                check_strict(quirks, before)
            if report.fatal:
                worst = report.quirks[0]
                raise DataError(worst.examples[0] if worst.examples else src, worst.message)
            left_over = _replace(out, dst)
            done = True
            if left_over is not None:
                quirks.add("old_output_left", str(left_over))
                report.quirks = quirks.sorted()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not done:
            _remove_if_empty(made)
    report.seconds = time.perf_counter() - started
    return report
