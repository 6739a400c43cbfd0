"""Roboflow COCO and COCO Segmentation exports: ``<split>/_annotations.coco.json`` plus images."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from sam3_lora_kit.data.errors import DataError
from sam3_lora_kit.data.paths import SPLIT_NAMES, find_split_dir, safe_join, written_by_kit
from sam3_lora_kit.data.quirks import QuirkLog
from sam3_lora_kit.data.records import RawAnnotation, RawImage

ANNOTATION_FILE = "_annotations.coco.json"


def load_json_object(path: Path) -> dict:
    """Parse ``path`` as a JSON object, or raise a one-line ``DataError``."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno})") from None
    if not isinstance(doc, dict):
        raise DataError(path, f"top level must be a JSON object, got {type(doc).__name__}")
    return doc


def _list_of_objects(doc: dict, key: str, path: Path) -> list[dict]:
    if key not in doc:
        raise DataError(path, f"missing '{key}'")
    items = doc[key]
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DataError(path, f"'{key}' must be a list of objects")
    return items


def _int_field(item: dict, key: str, path: Path, what: str) -> int:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(path, f"{what} has no integer '{key}' (got {value!r})")
    return value


def _is_phantom(category: dict) -> bool:
    return category.get("id") == 0 and category.get("supercategory") == "none"


class CocoReader:
    """Reads Roboflow COCO exports split by split, one JSON at a time."""

    format = "coco"

    def __init__(self, root: Path, quirks: QuirkLog) -> None:
        self.root, self.quirks = root, quirks
        self._dirs = {s: d for s in SPLIT_NAMES if (d := find_split_dir(root, s)) and (d / ANNOTATION_FILE).is_file()}

    def splits(self) -> list[str]:
        return list(self._dirs)

    def _load(self, split: str) -> tuple[Path, dict, list[dict], list[dict], list[dict]]:
        path = self._dirs[split] / ANNOTATION_FILE
        doc = load_json_object(path)
        images = _list_of_objects(doc, "images", path)
        annotations = _list_of_objects(doc, "annotations", path)
        categories = _list_of_objects(doc, "categories", path)
        return path, doc, images, annotations, categories

    def categories(self) -> list[str]:
        """Names ordered by their original id over all splits; the unused phantom category left out."""
        first_id: dict[str, int] = {}
        phantom: dict[str, bool] = {}  # phantom name -> used by some annotation
        for split in self._dirs:
            path, _, _, annotations, categories = self._load(split)
            used = {a.get("category_id") for a in annotations}
            ids_by_name: dict[str, set] = {}
            name_by_id: dict[int, str] = {}
            for category in categories:
                cid = _int_field(category, "id", path, "category")
                name = category.get("name")
                if not isinstance(name, str) or not name:
                    raise DataError(path, f"category {cid} has no name")
                if name_by_id.setdefault(cid, name) != name:
                    raise DataError(path, f"category id {cid} is used twice, for {name_by_id[cid]!r} and {name!r}")
                ids_by_name.setdefault(name, set()).add(cid)
                if _is_phantom(category):
                    phantom[name] = phantom.get(name, False) or cid in used
                    continue
                first_id[name] = min(first_id.get(name, cid), cid)
            for name, ids in ids_by_name.items():
                if len(ids) > 1:
                    self.quirks.add("duplicate_category_name", f"{path}: {name!r} ids {sorted(ids)}")
        for name, used in phantom.items():
            if used:
                self.quirks.add("phantom_category_used", name)
                first_id.setdefault(name, 0)
            elif name not in first_id:
                self.quirks.add("phantom_category", name)
        return sorted(first_id, key=lambda n: (first_id[n], n))

    def iter_images(self, split: str) -> Iterator[RawImage]:
        path, _, images, annotations, categories = self._load(split)
        folder = path.parent
        links_allowed = written_by_kit(folder)  # the kit's own `convert --link` output
        names = {_int_field(c, "id", path, "category"): c.get("name") for c in categories}
        by_image: dict[int, list[dict]] = {}
        seen_ann: set[int] = set()
        for ann in annotations:
            aid = _int_field(ann, "id", path, "annotation")
            if aid in seen_ann:
                raise DataError(path, f"duplicate annotation id {aid}")
            seen_ann.add(aid)
            by_image.setdefault(_int_field(ann, "image_id", path, f"annotation {aid}"), []).append(ann)
        image_ids: set[int] = set()
        for image in images:
            iid = _int_field(image, "id", path, "image")
            if iid in image_ids:
                raise DataError(path, f"duplicate image id {iid}")
            image_ids.add(iid)
        unknown = sorted(set(by_image) - image_ids)
        if unknown:
            raise DataError(path, f"annotation {by_image[unknown[0]][0]['id']} points at unknown image id {unknown[0]}")
        for image in images:
            iid = image["id"]
            file_name = image.get("file_name")
            where = f"{path} (image {iid})"
            file_path = safe_join(folder, file_name, path, links_allowed) if isinstance(file_name, str) else None
            if file_path is None:
                raise DataError(path, f"image {iid} has no 'file_name'")
            width, height = image.get("width"), image.get("height")
            record = RawImage(file_name=str(file_path.relative_to(folder).as_posix()), path=file_path, where=where,
                              width=width if isinstance(width, int) and width > 0 else None,
                              height=height if isinstance(height, int) and height > 0 else None)
            for ann in by_image.get(iid, []):
                cid = _int_field(ann, "category_id", path, f"annotation {ann['id']}")
                if cid not in names:
                    raise DataError(path, f"annotation {ann['id']} points at unknown category id {cid}")
                seg = ann.get("segmentation")
                if seg in ([], {}, "", None, [[]]):
                    seg = None
                if isinstance(seg, dict) and not ann.get("iscrowd"):
                    self.quirks.add("rle_non_crowd", f"{path} (annotation {ann['id']})")
                record.annotations.append(RawAnnotation(
                    category=names[cid], segmentation=seg, bbox=ann.get("bbox"),
                    where=f"{path} (annotation {ann['id']})", iscrowd=1 if ann.get("iscrowd") else 0))
            yield record
