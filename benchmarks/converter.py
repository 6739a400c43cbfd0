"""Converter throughput and peak memory: ``sam3-lora convert`` against supervision's loaders + COCO export.

The input is the bundled YOLOv8-segmentation sample (``data/sample/yolo-segmentation``)
replicated into ``train/`` to N images (hard links, so only the label files cost disk), and a
Pascal VOC export generated from it (one XML per image, boxes from the polygons' extents,
images hard-linked). Each converter runs end to end as its own process, one after the other:

- kit: ``python -m sam3_lora_kit.cli convert SRC DST --format yolo|voc`` (images copied: the
  output is a self-contained dataset);
- kit, linked: the same with ``--link`` (images linked, not copied: like supervision's output,
  annotations that point at the source images). The kit makes hard links where it can (here: the
  same file system), so no new inode per image;
- supervision: ``sv.DetectionDataset.from_yolo(...)`` / ``from_pascal_voc(...)`` then
  ``.as_coco(annotations_path=...)`` per split (annotations only; images not written).

Each pair runs ``--repeats`` times (who goes first alternates). Every run writes a new folder and
no output is deleted before the benchmark ends: on this machine's ext4 (kernel 6.18), a new inode is
not taken from those freed in the last minute or so, and ``find_inode_bit`` steps past each of them
(``recently_deleted``, 60 % of the samples in ``perf record``), so a run that creates 4,010 files
just after earlier runs deleted theirs spent 2.5-2.9 s of kernel time against 0.4-0.7 s in a new
folder (VOC, 4,010 images, by hand: 2.7-3.2 s wall against 1.05-1.27 s). A user's conversion into a
new folder does not meet that state; the earlier protocol (delete, then re-create in place) made
every kit run after the first meet it. ``os.sync()`` before each run flushes what earlier runs
wrote, so no timed run waits on another's disk writes.
Reported: images/s and instances/s over the whole command
(interpreter start and imports included; median of the repeats; both sides import from cached
bytecode, see ``compile_bytecode``), peak RSS (the process's ``VmHWM``), the kit/supervision ratios, and image and
annotation counts of both outputs, which must be equal. The kit's copying runs write the images from a
child process (``sam3_lora_kit.data.file_writer``), whose memory the command's ``VmHWM`` leaves out:
its own ``VmHWM`` is measured apart (``file_writer_peak``: the same input's images through one such
child) and added to the kit's peak of those runs.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.measure import ROOT, measure_module, vm_bytes  # standard library only: the supervision worker must not import torch

if TYPE_CHECKING:
    from benchmarks.common import Settings

NAME = "converter"
TITLE = "Converter: sam3-lora convert against supervision (YOLO-seg and VOC to COCO)"
# What the figures depend on (besides the shared timing code): see benchmarks/provenance.py.
SOURCES = ("sam3_lora_kit/data", "sam3_lora_kit/cli.py", "sam3_lora_kit/__init__.py", "sam3_lora_kit/_lazy.py", "benchmarks/converter.py")

FULL_SIZES = [1000, 4000]  # train images; memory at two sizes shows whether it grows with the dataset
QUICK_SIZES = [200]
SPLITS = ("train", "valid", "test")
GOALS = {"throughput_vs_supervision": 3.0, "peak_gb_1570_images": 0.5}


def available() -> str | None:
    try:
        import supervision  # noqa: F401
    except ImportError:
        return "supervision is not installed"
    return None


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system: copy
        shutil.copyfile(src, dst)


def compile_bytecode(root: Path = ROOT) -> None:
    """Write the kit's and the benchmarks' cached bytecode (``__pycache__``) before any timed run.

    pip compiled supervision's modules when it installed them, and a user's first import writes
    the kit's; with ``PYTHONDONTWRITEBYTECODE`` set (as on this kit's development machines) the
    kit's timed processes would instead compile every module from source on each run (0.02-0.09 s
    a run here in four paired runs by hand, VOC with ``--link``), which no user pays twice.
    ``compileall`` writes whatever that variable says; it only affects what imports write.
    """
    for package in ("sam3_lora_kit", "benchmarks"):
        compileall.compile_dir(root / package, quiet=1)


def make_yolo_input(sample: Path, root: Path, train_images: int) -> dict:
    """The sample with ``train/`` replicated to ``train_images`` images; returns image and instance counts."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample / "data.yaml", root / "data.yaml")
    counts = {"images": 0, "instances": 0}
    for split in SPLITS:
        images = sorted((sample / split / "images").iterdir())
        total = train_images if split == "train" else len(images)
        for index in range(total):
            image = images[index % len(images)]
            stem = image.stem if split != "train" else f"r{index:05d}_{image.stem}"
            label = sample / split / "labels" / f"{image.stem}.txt"
            _link(image, root / split / "images" / f"{stem}{image.suffix}")
            _link(label, root / split / "labels" / f"{stem}.txt")
            counts["images"] += 1
            counts["instances"] += sum(1 for line in label.read_text().splitlines() if line.strip())
    return counts


def make_voc_input(yolo_root: Path, root: Path) -> None:
    """A Pascal VOC export of ``yolo_root``: per image an XML with each polygon's bounding box."""
    import yaml
    from PIL import Image

    names = yaml.safe_load((yolo_root / "data.yaml").read_text())["names"]
    sizes: dict[int, tuple[int, int]] = {}
    for split in SPLITS:
        for image in sorted((yolo_root / split / "images").iterdir()):
            key = image.stat().st_ino  # replicas are hard links: read each image's size once
            if key not in sizes:
                with Image.open(image) as opened:
                    sizes[key] = opened.size
            width, height = sizes[key]
            objects = []
            for line in (yolo_root / split / "labels" / f"{image.stem}.txt").read_text().splitlines():
                values = line.split()
                if not values:
                    continue
                xs = [float(v) * width for v in values[1::2]]
                ys = [float(v) * height for v in values[2::2]]
                objects.append(f"<object><name>{names[int(values[0])]}</name><bndbox><xmin>{min(xs):.1f}</xmin>"
                               f"<ymin>{min(ys):.1f}</ymin><xmax>{max(xs):.1f}</xmax><ymax>{max(ys):.1f}</ymax></bndbox></object>")
            _link(image, root / split / image.name)
            (root / split / f"{image.stem}.xml").write_text(
                f"<annotation><filename>{image.name}</filename><size><width>{width}</width><height>{height}</height>"
                f"<depth>3</depth></size>{''.join(objects)}</annotation>\n", encoding="utf-8")


def supervision_convert(fmt: str, src: Path, dst: Path) -> dict:
    """supervision's loader and COCO export, split by split; returns the counts it wrote."""
    import supervision as sv

    counts = {"images": 0, "annotations": 0}
    for split in SPLITS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "yolo":
                dataset = sv.DetectionDataset.from_yolo(str(src / split / "images"), str(src / split / "labels"),
                                                        str(src / "data.yaml"))
            else:
                dataset = sv.DetectionDataset.from_pascal_voc(str(src / split), str(src / split))
            path = dst / split / "_annotations.coco.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset.as_coco(annotations_path=str(path))
        doc = json.loads(path.read_text(encoding="utf-8"))
        counts["images"] += len(doc["images"])
        counts["annotations"] += len(doc["annotations"])
    return counts


def kit_counts(dst: Path) -> dict:
    counts = {"images": 0, "annotations": 0}
    for split in SPLITS:
        path = dst / split / "_annotations.coco.json"
        if path.exists():
            doc = json.loads(path.read_text(encoding="utf-8"))
            counts["images"] += len(doc["images"])
            counts["annotations"] += len(doc["annotations"])
    return counts


def run(settings: Settings, log=print) -> dict:
    from sam3_lora_kit.data import sample_data_dir

    sample = sample_data_dir() / "yolo-segmentation"
    compile_bytecode()
    rows = []
    # One folder for every size and run, deleted only at the end: see the module docstring (inodes freed
    # seconds before cost each later file creation on this machine's ext4).
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp_root:
        for train_images in QUICK_SIZES if settings.quick else FULL_SIZES:
            rows.extend(_run_size(sample, Path(tmp_root) / f"n{train_images}", train_images, settings.repeats, log))
    return {"parameters": {"sample": str(sample), "sizes": QUICK_SIZES if settings.quick else FULL_SIZES,
                           "goals": GOALS, "supervision_backend": _sv_backend(),
                           "bytecode": "cached for both sides (compile_bytecode before the timed runs)",
                           "outputs": "each run writes a new folder; none is deleted before the benchmark ends"},
            "runs": rows, "goals": goals(rows)}


def _run_size(sample: Path, tmp: Path, train_images: int, repeats: int, log) -> list[dict]:
    """Every format at one dataset size: ``repeats`` runs of each side, each into a folder of its own."""
    made = make_yolo_input(sample, tmp / "yolo", train_images)
    make_voc_input(tmp / "yolo", tmp / "voc")
    rows = []
    for fmt in ("yolo", "voc"):
        src = tmp / fmt
        kit_runs, sv_runs, link_runs = [], [], []
        kit_out = link_out = None
        for repeat in range(repeats):  # rotate who goes first: file-system state drifts
            order = ("kit", "sv", "link")[repeat % 3:] + ("kit", "sv", "link")[:repeat % 3]
            for side in order:
                out = tmp / f"{side}-{fmt}-{repeat}"  # new: nothing deleted, nothing to overwrite
                os.sync()  # earlier runs' writes reach the disk before the clock starts
                if side in ("kit", "link"):
                    argv = ["convert", str(src), str(out), "--format", fmt] + (["--link"] if side == "link" else [])
                    (kit_runs if side == "kit" else link_runs).append(measure_module("sam3_lora_kit.cli", argv))
                    kit_out, link_out = (out, link_out) if side == "kit" else (kit_out, out)
                else:
                    sv_runs.append(_measure_supervision(fmt, src, out))
        kit, sv = _combine(kit_runs), _combine(sv_runs)
        kit["process_peak_rss"] = kit["peak_rss"]
        kit["file_writer_peak_rss"] = file_writer_peak(src, tmp / f"writer-{fmt}")
        kit["peak_rss"] = (kit["peak_rss"] or 0) + kit["file_writer_peak_rss"] or None  # the command and its child
        kit["counts"] = kit_counts(kit_out)
        sv["counts"] = sv_runs[-1]["counts"]
        row = {"format": fmt, "images": made["images"], "instances": made["instances"], "kit": kit, "supervision": sv}
        for side in (kit, sv):
            side["images_per_s"] = made["images"] / side["wall_s"]
            side["instances_per_s"] = made["instances"] / side["wall_s"]
        row["counts_equal"] = kit["counts"] == sv["counts"]
        # kit images/s over supervision's: the median over repeats of the paired ratio
        row["throughput_ratio"] = statistics.median(s_["wall_s"] / k["wall_s"] for k, s_ in zip(kit_runs, sv_runs))
        # the same, with supervision's import time removed from its side only (conservative for the kit)
        row["throughput_ratio_sv_without_import"] = (
            statistics.median(s_["convert_s"] / k["wall_s"] for k, s_ in zip(kit_runs, sv_runs))
            if all(s_.get("convert_s") for s_ in sv_runs) else None)
        row["memory_ratio"] = (kit["peak_rss"] / sv["peak_rss"]) if kit["peak_rss"] and sv["peak_rss"] else None
        linked = _combine(link_runs)
        linked["counts"] = kit_counts(link_out)
        linked["images_per_s"] = made["images"] / linked["wall_s"]
        row["kit_linked"] = linked
        row["counts_equal"] = row["counts_equal"] and linked["counts"] == sv["counts"]
        row["throughput_ratio_linked"] = statistics.median(s_["wall_s"] / k["wall_s"] for k, s_ in zip(link_runs, sv_runs))
        rows.append(row)
        log(f"  {fmt:<4} {made['images']:>5} images: kit {kit['images_per_s']:.0f} img/s "
            f"{(kit['peak_rss'] or 0) / 2**20:.0f} MiB, supervision {sv['images_per_s']:.0f} img/s "
            f"{(sv['peak_rss'] or 0) / 2**20:.0f} MiB, x{row['throughput_ratio']:.2f} (linked x{row['throughput_ratio_linked']:.2f}), "
            f"counts equal: {row['counts_equal']}")
    return rows


def file_writer_peak(src: Path, out: Path) -> int:
    """Peak RSS (``VmHWM``, bytes) of the kit's file-writing child after writing every image under ``src`` into ``out``."""
    from sam3_lora_kit.data.file_writer import FileWriterProcess

    out.mkdir(parents=True)
    with FileWriterProcess.start() as writer:
        for index, image in enumerate(sorted(p for p in src.rglob("*") if p.suffix == ".jpg")):
            writer.write(out / f"{index}.jpg", image.read_bytes())
        writer.wait()
        return vm_bytes(writer.pid, "VmHWM")


def _measure_supervision(fmt: str, src: Path, dst: Path) -> dict:
    """One supervision run in its own process: wall time, peak RSS, its import and convert times, counts."""
    run_ = measure_module("benchmarks.converter", ["--supervision", fmt, str(src), str(dst)])
    doc = dst / "counts.json"
    figures = json.loads(doc.read_text()) if doc.exists() else {}
    run_["import_s"], run_["convert_s"] = figures.pop("import_s", None), figures.pop("convert_s", None)
    run_["counts"] = figures or None
    return run_


def _combine(runs: list[dict]) -> dict:
    """Repeats of one side: median wall time (and import/convert times), largest peak, every run kept."""
    combined = {"wall_s": statistics.median(r["wall_s"] for r in runs),
                "peak_rss": max((r["peak_rss"] or 0 for r in runs), default=0) or None,
                "returncode": max(r["returncode"] for r in runs), "runs": runs}
    for key in ("import_s", "convert_s"):
        if all(r.get(key) is not None for r in runs):
            combined[key] = statistics.median(r[key] for r in runs)
    return combined


def _sv_backend() -> str:
    try:
        import cv2  # noqa: F401
        return "opencv"
    except ImportError:
        return "numpy fallback (opencv-python not installed)"


def goals(rows: list[dict]) -> dict:
    ratios = [row["throughput_ratio"] for row in rows]
    strict = [row["throughput_ratio_sv_without_import"] for row in rows if row.get("throughput_ratio_sv_without_import")]
    linked = [row["throughput_ratio_linked"] for row in rows if row.get("throughput_ratio_linked")]
    largest = max((row["images"] for row in rows), default=0)
    peaks = [row["kit"]["peak_rss"] for row in rows if row["images"] == largest and row["kit"]["peak_rss"]]
    by_size = {}
    for row in rows:
        if row["kit"]["peak_rss"]:
            by_size.setdefault(row["format"], {})[row["images"]] = row["kit"]["peak_rss"]
    growth = {fmt: sizes[max(sizes)] / sizes[min(sizes)] for fmt, sizes in by_size.items() if len(sizes) > 1}
    return {"throughput_vs_supervision": {"limit": GOALS["throughput_vs_supervision"], "value": min(ratios) if ratios else None,
                                          "met": bool(ratios) and min(ratios) >= GOALS["throughput_vs_supervision"],
                                          "note": "worst case over formats and sizes; each converter as a whole process, as a user runs it"},
            "throughput_vs_supervision_sv_import_excluded": {
                "limit": GOALS["throughput_vs_supervision"], "value": min(strict) if strict else None,
                "met": bool(strict) and min(strict) >= GOALS["throughput_vs_supervision"],
                "note": "stricter reading: worst case with supervision's import time removed, the kit's kept"},
            "throughput_vs_supervision_linked": {
                "limit": GOALS["throughput_vs_supervision"], "value": min(linked) if linked else None,
                "met": bool(linked) and min(linked) >= GOALS["throughput_vs_supervision"],
                "note": "like for like: the kit with --link, so neither side writes image files"},
            "peak_gb_1570_images": {"limit": GOALS["peak_gb_1570_images"], "value": max(peaks) / 1e9 if peaks else None,
                                    "met": bool(peaks) and max(peaks) / 1e9 <= GOALS["peak_gb_1570_images"],
                                    "note": f"measured at {largest} images"},
            "kit_peak_growth": {"limit": None, "value": growth, "met": None,
                                "note": "kit peak RSS at the largest size over the smallest, per format"}}


def report(result: dict, out_dir) -> str:
    from benchmarks.common import markdown_table

    body = result["result"]
    rows = []
    for row in body["runs"]:
        kit, sv = row["kit"], row["supervision"]
        mib = lambda v: "n/a" if not v else f"{v / 2**20:.0f}"  # noqa: E731
        rows.append([row["format"], f"{row['images']:,}", f"{row['instances']:,}",
                     f"{kit['images_per_s']:.0f}", f"{sv['images_per_s']:.0f}", f"{kit['instances_per_s']:.0f}",
                     f"{sv['instances_per_s']:.0f}", f"{row['throughput_ratio']:.2f}",
                     "n/a" if row.get("throughput_ratio_linked") is None else
                     f"{row['kit_linked']['images_per_s']:.0f} img/s, {row['throughput_ratio_linked']:.2f}",
                     "n/a" if row.get("throughput_ratio_sv_without_import") is None else f"{row['throughput_ratio_sv_without_import']:.2f}", mib(kit["peak_rss"]), mib(sv["peak_rss"]),
                     "n/a" if row["memory_ratio"] is None else f"{row['memory_ratio']:.2f}",
                     f"{kit['counts']['images']}/{kit['counts']['annotations']}" if kit["counts"] else "n/a",
                     f"{sv['counts']['images']}/{sv['counts']['annotations']}" if sv["counts"] else "n/a",
                     "yes" if row["counts_equal"] else "**no**"])
    lines = [f"## {TITLE}", "",
             "Each converter runs as its own process, end to end (interpreter start and imports included, both from cached "
             "bytecode, as after a user's first run); peak RSS is the "
             "process's `VmHWM` (the kit's: plus that of the child process that writes its image copies, measured apart). \"same, sv import excluded\" removes supervision's import time from its side only. The kit copies the images into its output; supervision writes annotations only; \"kit --link\" links the images instead of copying them (like supervision's output, annotations that point at the source images). "
             f"supervision's image backend here: {body['parameters']['supervision_backend']}.", "",
             markdown_table(["format", "images", "instances", "kit img/s", "sv img/s", "kit inst/s", "sv inst/s",
                             "kit / sv throughput", "kit --link: img/s, / sv", "same, sv import excluded", "kit MiB", "sv MiB", "kit / sv memory", "kit images/anns",
                             "sv images/anns", "counts equal"], rows), "", "### Goals", ""]
    goal_rows = []
    for key, goal in body["goals"].items():
        value = goal["value"]
        shown = ", ".join(f"{k} {v:.2f}" for k, v in value.items()) if isinstance(value, dict) else ("n/a" if value is None else f"{value:.2f}")
        goal_rows.append([key, goal["limit"] if goal["limit"] is not None else "", shown or "n/a",
                          {True: "yes", False: "no", None: ""}[goal["met"]], goal.get("note") or ""])
    lines.append(markdown_table(["goal", "limit", "measured", "met", "note"], goal_rows))
    plot = _plot(body, Path(out_dir))
    if plot:
        lines += ["", f"![converter throughput and memory]({plot})"]
    return "\n".join(lines)


def _plot(body: dict, out_dir: Path) -> str | None:
    if not body["runs"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = body["runs"]
    labels = [f"{r['format']}\n{r['images']}" for r in runs]
    x = range(len(runs))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.4
    axes[0].bar([i - width / 2 for i in x], [r["kit"]["images_per_s"] for r in runs], width, label="sam3-lora convert")
    axes[0].bar([i + width / 2 for i in x], [r["supervision"]["images_per_s"] for r in runs], width, label="supervision")
    linked = [(i, r["kit_linked"]["images_per_s"]) for i, r in zip(x, runs) if r.get("kit_linked")]
    if linked:  # drawn over the kit's bar: how much of its time is writing image files
        axes[0].scatter([i - width / 2 for i, _ in linked], [v for _, v in linked], marker="_", s=300, color="black",
                        label="sam3-lora convert --link", zorder=3)
    axes[0].set_ylabel("images / s")
    axes[1].bar([i - width / 2 for i in x], [(r["kit"]["peak_rss"] or 0) / 2**20 for r in runs], width)
    axes[1].bar([i + width / 2 for i in x], [(r["supervision"]["peak_rss"] or 0) / 2**20 for r in runs], width)
    axes[1].set_ylabel("peak RSS (MiB)")
    for ax in axes:
        ax.set_xticks(list(x), labels)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    name = f"{NAME}.png"
    fig.savefig(out_dir / name, dpi=100)
    plt.close(fig)
    return name


def _main() -> int:
    parser = argparse.ArgumentParser(description="supervision's side of the converter benchmark (internal)")
    parser.add_argument("--supervision", choices=("yolo", "voc"), required=True)
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    args = parser.parse_args()
    began = time.perf_counter()
    import supervision  # noqa: F401  (timed apart: a long-lived program pays it once)

    imported = time.perf_counter()
    counts = supervision_convert(args.supervision, args.src, args.dst)
    counts_doc = {**counts, "import_s": imported - began, "convert_s": time.perf_counter() - imported}
    (args.dst / "counts.json").write_text(json.dumps(counts_doc), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
