"""Write one split of a clean COCO dataset: images placed as they come, COCO records streamed to disk.

Memory stays flat with the split's size: each image's and annotation's JSON is appended to an
unnamed temporary file as it comes, and ``finish`` joins them into ``_annotations.coco.json``
(byte for byte what ``json.dumps`` of the whole document gives). Copies of image files are
written by a child process where the caller hands one over (``file_writer``: its own
interpreter lock, so the system calls run beside the cleaning of the next images); links (hard
links where possible, else symbolic links) and the other copies by one background thread, about
``QUEUED_IMAGES`` images waiting in memory at a time.
"""
from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from sam3_lora_kit.data.clean import CleanImage
from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.file_writer import FileWriterProcess, write_bytes
from sam3_lora_kit.data.paths import KIT_DESCRIPTION

ANNOTATION_FILE = "_annotations.coco.json"
QUEUED_IMAGES = 16  # images handed to the placing thread and not yet on disk (about)
BATCH_IMAGES = 4  # images handed over at a time
_COMPACT = (",", ":")


# How an image is placed when linking: the first that works, remembered for the split's next files.
HARD, SYMBOLIC, COPY = "hard", "symbolic", "copy"
# errors after which no further hard link is tried: another file system, none supported
_NO_HARD_LINKS = {errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
# errors after which no further symbolic link is tried (FAT and exFAT have none)
_NO_SYMBOLIC_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def place_file(source: Path, target: str | Path, data: bytes | None, link: bool, kind: str = HARD) -> str:
    """Put one image at ``target``: a link to ``source``, its bytes ``data``, or a copy of ``source``.

    Linking tries ``kind`` first: a hard link (no new inode: on ext4 far cheaper than a new file
    or a symbolic link, and it survives the source being moved), else a symbolic link, else a
    copy. A source that is itself a link is followed to its file first. Returns the kind to try
    first for the next file: a file system without hard (or symbolic) links is not asked again,
    while a refusal that concerns one file only (``EPERM`` from Linux's protected hard links,
    ``EMLINK``) is.
    """
    next_kind = kind
    if link and kind != COPY:
        if kind == HARD:
            try:  # os.link would link a symbolic link itself, not its file (folders on the way are followed)
                os.link(os.path.realpath(source) if os.path.islink(source) else source, target)
                return HARD
            except OSError as error:
                if error.errno == errno.EEXIST:
                    raise
                if error.errno in _NO_HARD_LINKS:
                    next_kind = SYMBOLIC
        try:
            os.symlink(os.path.realpath(source), target)
            return next_kind
        except OSError as error:
            if error.errno not in _NO_SYMBOLIC_LINKS:
                raise
            next_kind = COPY
    if data is not None:  # the bytes the cleaner read and checked: no second read
        write_bytes(target, data)
    else:
        shutil.copyfile(source, target)
    return next_kind


class _Placer:
    """One thread placing image files in order, handed over in batches (fewer thread wake-ups).

    The first error is raised in the caller's thread, at a later ``put`` or at ``close``.
    """

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=max(QUEUED_IMAGES // BATCH_IMAGES, 1))
        self._batch: list[tuple[Path, str | Path, bytes | None, bool]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sam3-lora-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        kind = HARD  # how the next linked image is placed first
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            for job in batch:
                if self._error is None:
                    try:
                        kind = place_file(*job, kind=kind)
                    except BaseException as error:  # noqa: BLE001 (handed to the caller's thread)
                        self._error = error

    def put(self, source: Path, target: str | Path, data: bytes | None, link: bool) -> None:
        """Queue one file (blocks while ``QUEUED_IMAGES`` wait); raises an earlier placement's error."""
        self.check()
        self._batch.append((source, target, data, link))
        if len(self._batch) >= BATCH_IMAGES:
            self._jobs.put(self._batch)
            self._batch = []

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait until every queued file is placed (or skipped after an error) and stop the thread."""
        if self._batch:
            self._jobs.put(self._batch)
            self._batch = []
        self._jobs.put(None)
        self._thread.join()


class SplitWriter:
    """Writes one split: compact COCO records (polygons/RLE, never dense masks) and its image files.

    Use as a context manager: leaving the block waits for the image files, also on an error.
    """

    def __init__(self, folder: Path, categories: list[str], link: bool = False, keep_out: Path | None = None,
                 file_writer: FileWriterProcess | None = None) -> None:
        """``keep_out``: a folder no image may be linked into (the output this conversion replaces:
        a link there would point at a file about to be deleted); such images are copied and
        counted in ``copied_not_linked`` (the first few named in ``copied_examples``).
        ``file_writer``: the child process that writes the copies whose bytes were read (the
        caller's, shared by the splits; ``finish`` waits for it); without one, or where it is not
        ``ready()``, the thread does."""
        self.folder, self.link, self._file_writer = folder, link, file_writer
        self._keep_out = str(keep_out.resolve()) + os.sep if keep_out is not None else None
        self.copied_not_linked = 0  # sources inside ``keep_out``
        self.copied_examples: list[Path] = []
        self.category_ids = {name: k for k, name in enumerate(categories, 1)}  # ids 1..K in the order given
        self.num_images = self.num_annotations = 0
        self._names: set[str] = set()
        self._made: set[Path] = {folder}  # folders known to exist
        self._folder_str = str(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._images = tempfile.TemporaryFile(dir=folder)  # unnamed: nothing to clean up
        self._annotations = tempfile.TemporaryFile(dir=folder)
        self._placer = _Placer()
        self._encoder = json.JSONEncoder(separators=_COMPACT)  # what json.dumps(..., separators=_COMPACT) uses

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the image files and release the temporary files (``finish`` and ``__exit__`` call it)."""
        if self._placer is not None:
            self._placer.close()
            self._placer = None
        self._images.close()
        self._annotations.close()

    def add(self, source: Path, image: CleanImage) -> None:
        """Place the image file and record its annotations."""
        if image.file_name in self._names:
            raise DataError(source, f"file name {image.file_name!r} appears twice in one split")
        self._names.add(image.file_name)
        if "/" in image.file_name:  # in a subfolder of the split
            target = self.folder / image.file_name
            if target.parent not in self._made:
                target.parent.mkdir(parents=True, exist_ok=True)
                self._made.add(target.parent)
        else:
            target = os.path.join(self._folder_str, image.file_name)
        link = self.link
        if link and self._keep_out is not None and os.path.realpath(source).startswith(self._keep_out):
            link = False
            self.copied_not_linked += 1
            if len(self.copied_examples) < 3:
                self.copied_examples.append(source)
        if self._file_writer is not None and not link and image.data is not None and self._file_writer.ready():
            self._file_writer.write(target, image.data)
        else:
            self._placer.put(source, target, image.data, link)
        image.data = None
        self.num_images += 1
        record = {"id": self.num_images, "file_name": image.file_name, "width": image.width, "height": image.height}
        if image.export_name is not None:  # renamed: the export's name, where Roboflow's COCO keeps it
            record["extra"] = {"name": image.export_name}
        self._append(self._images, self.num_images == 1, [record])
        annotations = []
        for ann in image.annotations:
            coco = {"id": self.num_annotations + len(annotations) + 1, "image_id": self.num_images, **ann}
            coco["category_id"] = self.category_ids[coco.pop("category")]  # the name becomes the last key, an id
            annotations.append(coco)
        self._append(self._annotations, self.num_annotations == 0, annotations)
        self.num_annotations += len(annotations)

    def _append(self, part, first: bool, records: list[dict]) -> None:
        """Append ``records`` to a JSON list being streamed: one encoding per image, commas between records."""
        if records:
            text = self._encoder.encode(records)[1:-1]  # "[a,b]" -> "a,b", as json.dumps joins list items
            part.write((text if first else "," + text).encode("ascii"))

    def finish(self) -> Path:
        """Wait for the image files, then write ``_annotations.coco.json`` (category ids 1..K)."""
        self._placer.close()
        self._placer, placer = None, self._placer
        placer.check()
        if self._file_writer is not None and self._file_writer.ready():
            self._file_writer.wait()
        categories = [{"id": k, "name": name, "supercategory": "object"} for name, k in self.category_ids.items()]
        path = self.folder / ANNOTATION_FILE
        with open(path, "wb") as out:
            out.write(b'{"info":' + _dumps({"description": KIT_DESCRIPTION}) + b',"images":[')
            _copy_part(self._images, out)
            out.write(b'],"annotations":[')
            _copy_part(self._annotations, out)
            out.write(b'],"categories":' + _dumps(categories) + b"}")
        self.close()
        return path


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=_COMPACT).encode("ascii")


def _copy_part(part, out) -> None:
    part.seek(0)
    shutil.copyfileobj(part, out)
