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
    """Extract ``archive`` into ``target``, refusing entries that would land outside it or links.

    Names without the zip's UTF-8 flag are read as UTF-8 where they decode (Info-ZIP and macOS
    write UTF-8 without the flag), else as cp437 (the zip default).
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                info.filename = _zip_member_name(info)
                name = info.filename
                try:
                    check_relative_name(name, archive)
                except DataError:
                    raise DataError(archive, f"entry {name!r} would land outside the target") from None
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise DataError(archive, f"entry {name!r} is a symbolic link (refused)")
                if info.flag_bits & 0x1:
                    raise DataError(archive, f"entry {name!r} is encrypted (password-protected zips are not "
                                             "supported: re-export or unzip it yourself)")
            for info in members:
                info.filename = info.filename.replace("\\", "/")  # a zip written on Windows: folders, not names
                try:
                    zf.extract(info, target)
                except (RuntimeError, NotImplementedError) as error:  # encrypted, or Deflate64 and other methods
                    raise DataError(archive, f"entry {info.filename!r} cannot be extracted ({error}): "
                                             "re-create the zip with plain Deflate, or unzip it yourself") from None
    except zipfile.BadZipFile as error:
        raise DataError(archive, f"not a valid zip file ({error})") from None


def _zip_member_name(info: zipfile.ZipInfo) -> str:
    """The entry's name: UTF-8 where the name has no UTF-8 flag (0x800) but its bytes decode as UTF-8."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeError:
        return info.filename


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (links followed), sorted by name; macOS ``._`` files skipped."""
    if not folder.is_dir():
        return []
    with os.scandir(folder) as listing:
        names = sorted(e.name for e in listing if _suffix(e.name).lower() in IMAGE_SUFFIXES
                       and not is_apple_double(e.name) and _is_file(e))
    return [folder / name for name in names]


def glob_files(folder: Path, pattern: str) -> list[Path]:
    """``folder.glob(pattern)`` sorted by name, without macOS AppleDouble ``._`` files."""
    return sorted((p for p in folder.glob(pattern) if not is_apple_double(p.name)), key=lambda p: p.name)


def is_apple_double(name: str) -> bool:
    """True for a macOS AppleDouble file (``._name``: metadata macOS writes on exFAT, FAT and SMB volumes)."""
    return name.startswith("._")


def check_disk_name(path: Path) -> str:
    """``path.name``, or raise where a COCO file could not name it (``\\`` or ``X:`` read as a folder or drive)."""
    name = path.name
    if "\\" in name or ":" in name and PureWindowsPath(name).drive:
        raise DataError(path, f"file name {name!r} contains '\\' or a drive 'X:' (read as a folder or a drive "
                              "by COCO readers): rename the file")
    return name


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
