"""Safe paths: every file named by an export must stay inside the export."""
from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from sam3_lora_kit.data.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "valid", "test")
SPLIT_ALIASES = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}
KIT_DESCRIPTION = "converted by sam3-lora-kit"  # the ``info`` of every COCO file the converter writes
_KIT_COCO_START = b'{"info":{"description":"' + KIT_DESCRIPTION.encode("ascii") + b'"'


def written_by_kit(folder: Path) -> bool:
    """True when ``folder/_annotations.coco.json`` was written by the kit's converter.

    Its images may then be links to anywhere (``convert --link``); an export's may not.
    """
    try:
        with open(folder / "_annotations.coco.json", "rb") as file:
            return file.read(len(_KIT_COCO_START)) == _KIT_COCO_START
    except OSError:
        return False


def is_inside(path: Path, root: Path) -> bool:
    """True when ``path`` (resolved, links followed) lies inside ``root`` (resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def check_relative_name(name: str, where: str | Path) -> str:
    """Return ``name`` as a clean POSIX relative path, or raise if it could escape its folder."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(where, f"empty or non-text file name {name!r}")
    if _is_plain_name(name):
        return name
    if "\x00" in name:
        raise DataError(where, f"file name {name!r} contains a NUL byte")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise DataError(where, f"file name {name!r} is an absolute path (escapes the export)")
    parts = PurePosixPath(posix).parts
    if ".." in parts:
        raise DataError(where, f"file name {name!r} contains '..' (escapes the export)")
    return str(PurePosixPath(*[p for p in parts if p != "."]))


def _is_plain_name(name: str) -> bool:
    """True for a single file name that no path rule can change: no separator, drive colon, NUL, '.' or '..'."""
    return name not in (".", "..") and not any(c in name for c in "/\\:\x00")


def _real_inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def safe_lookup(root: Path, name: str, where: str | Path, allow_link: bool = False) -> tuple[Path, bool]:
    """``safe_join`` that also says whether the path is a regular file (links followed).

    Cheap on the common path: one ``lstat`` per component of ``name`` (usually one). Only where a
    component is a link is the path resolved and compared with the resolved root.
    """
    clean = check_relative_name(name, where)
    path = root / clean
    current = str(root)
    parts = clean.split("/")
    for index, part in enumerate(parts):
        current = f"{current}{os.sep}{part}"
        try:
            mode = os.lstat(current).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return path, False  # nothing there (yet): nothing to follow
        if stat.S_ISLNK(mode):
            last = index == len(parts) - 1
            if not (last and allow_link) and not _real_inside(str(path), os.path.realpath(root)):
                raise DataError(where, f"file {name!r} is a link pointing outside its folder {root} "
                                       f"(to {os.path.realpath(path)})")
            return path, path.is_file()
    return path, stat.S_ISREG(mode)


def safe_join(root: Path, name: str, where: str | Path, allow_link: bool = False) -> Path:
    """Join ``root`` and an export-given ``name``; refuse names or links that leave ``root``.

    ``allow_link``: the file itself may be a link to anywhere (what ``convert --link`` writes into
    its output); folders on the way must still stay inside ``root``.
    """
    return safe_lookup(root, name, where, allow_link)[0]


def check_no_escaping_links(root: Path) -> None:
    """Raise if any link under ``root`` points outside it (checked before reading an export).

    Exception: links to files in a split folder the kit's converter wrote (``convert --link``).

    Visits entries in ``os.walk``'s order (top down; in each folder its subfolders, then its
    files; links to folders not followed), reading each folder once with ``os.scandir``.
    """
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            continue  # unreadable: skipped, as os.walk does
        folders = [e for e in entries if _is_dir(e)]
        file_links_allowed = None  # whether this folder's file links may leave the export: read when needed
        for entry in folders + [e for e in entries if not _is_dir(e)]:
            if entry.is_symlink() and not is_inside(Path(entry.path), root):
                if file_links_allowed is None:
                    file_links_allowed = written_by_kit(Path(folder))
                if not (file_links_allowed and not _is_dir(entry)):
                    raise DataError(Path(entry.path), f"link pointing outside the export ({os.readlink(entry.path)})")
        pending.extend(e.path for e in reversed(folders) if not e.is_symlink())


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def safe_extract_zip(archive: Path, target: Path) -> None:
    """Extract ``archive`` into ``target``, refusing entries that would land outside it or links."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                name = info.filename
                try:
                    check_relative_name(name, archive)
                except DataError:
                    raise DataError(archive, f"entry {name!r} would land outside the target") from None
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise DataError(archive, f"entry {name!r} is a symbolic link (refused)")
            for info in members:
                info.filename = info.filename.replace("\\", "/")  # a zip written on Windows: folders, not names
                zf.extract(info, target)
    except zipfile.BadZipFile as error:
        raise DataError(archive, f"not a valid zip file ({error})") from None


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (links followed), sorted by name."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as listing:
        names = sorted(e.name for e in listing if _suffix(e.name).lower() in IMAGE_SUFFIXES and _is_file(e))
    return [folder / name for name in names]


def _suffix(name: str) -> str:
    """``PurePath(name).suffix``: from the last dot, unless the name starts or ends with it."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def find_split_dir(root: Path, split: str) -> Path | None:
    """The folder of ``split`` (``valid`` also matches ``val``), or None."""
    for alias in SPLIT_ALIASES[split]:
        if (root / alias).is_dir():
            return root / alias
    return None
