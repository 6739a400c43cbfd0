"""Load: a YOLO-segmentation export of 3000 images converts with exact counts and bounded memory.

The export is the bundled sample (``data/sample/yolo-segmentation``, 30 images) replicated with
hard links under new names, so it is written in a fraction of a second. Each conversion runs in
its own Python process, which reports its peak resident memory (``ru_maxrss``) beside the
resident memory it had just before converting. The converter streams (one decoded image at a
time; only compact polygons are kept), so ten times the images must not cost ten times the memory.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "yolo-segmentation"
SPLITS = ("train", "valid", "test")

# Runs in a fresh process: warm up on the small sample (imports, lazy modules), then convert ARGV[1].
WORKER = r"""
import json, resource, sys, time
from sam3_lora_kit.data import convert_roboflow

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

convert_roboflow(sys.argv[3], sys.argv[4])
before = rss_mib()
started = time.perf_counter()
report = convert_roboflow(sys.argv[1], sys.argv[2])
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({"report": report.to_dict(), "rss_before_mib": before, "peak_mib": peak, "seconds": seconds}))
"""


def replicate_sample(root: Path, copies: int) -> dict:
    """``copies`` hard-linked copies of every sample image and label under ``root``; returns the expected counts."""
    seed = root.parent / "seed"
    if not seed.exists():
        shutil.copytree(SAMPLE, seed)  # link to a private copy, never to the repository's files
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(seed / "data.yaml", root / "data.yaml")
    names = [line[2:].strip() for line in (seed / "data.yaml").read_text().splitlines() if line.startswith("- ")]
    expected = {}
    for split in SPLITS:
        images = sorted((seed / split / "images").iterdir())
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True)
        per_class: Counter = Counter()
        instances = 0
        for image in images:
            label = seed / split / "labels" / f"{image.stem}.txt"
            lines = [line for line in label.read_text().splitlines() if line.strip()] if label.exists() else []
            instances += len(lines)
            per_class.update(names[int(line.split()[0])] for line in lines)
            for k in range(copies):
                os.link(image, root / split / "images" / f"c{k:04d}_{image.name}")
                if label.exists():
                    os.link(label, root / split / "labels" / f"c{k:04d}_{label.name}")
        expected[split] = {"images": len(images) * copies, "instances": instances * copies,
                           "per_class": {name: n * copies for name, n in per_class.items()}}
    return expected


def convert_in_child(src: Path, dst: Path, warm_dst: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, str(src), str(dst), str(SAMPLE), str(warm_dst)],
                         capture_output=True, text=True, cwd=REPO, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and ru_maxrss in KiB (Linux)")
def test_several_thousand_images_exact_counts_bounded_memory(tmp_path):
    results = {}
    for copies in (10, 100):  # 300 and 3000 images
        src = tmp_path / f"export{copies}"
        expected = replicate_sample(src, copies)
        dst = tmp_path / f"out{copies}"
        result = convert_in_child(src, dst, tmp_path / f"warm{copies}")
        report = result["report"]
        for split, want in expected.items():
            got = report["splits"][split]
            assert got["images_in"] == got["images_out"] == want["images"], (split, got)
            assert got["instances_in"] == got["instances_out"] == want["instances"], (split, got)
            assert got["per_class"] == want["per_class"], (split, got)
            written = json.loads((dst / split / "_annotations.coco.json").read_text())
            assert len(written["images"]) == want["images"] and len(written["annotations"]) == want["instances"]
            assert len(list((dst / split).glob("*.jpg"))) == want["images"]
        assert not [q for q in report["quirks"] if q["severity"] in ("dropped", "fatal")], report["quirks"]
        results[copies] = result
        shutil.rmtree(dst)
        shutil.rmtree(src)

    small, large = results[10], results[100]
    total = sum(s["images_out"] for s in large["report"]["splits"].values())
    instances = sum(s["instances_out"] for s in large["report"]["splits"].values())
    print(f"\nload: {total} images, {instances} instances; "
          f"peak RSS {small['peak_mib']:.0f} MiB (300 images) vs {large['peak_mib']:.0f} MiB ({total} images); "
          f"{small['seconds']:.1f} s vs {large['seconds']:.1f} s")
    assert total == 3000
    # Ten times the images: the peak may grow by the compact records, never by decoded images.
    growth_small = small["peak_mib"] - small["rss_before_mib"]
    growth_large = large["peak_mib"] - large["rss_before_mib"]
    assert large["peak_mib"] - small["peak_mib"] < 150, (small, large)
    assert growth_large < growth_small + 150, (growth_small, growth_large)
