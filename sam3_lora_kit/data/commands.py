"""The ``convert`` and ``inspect`` subcommands of ``sam3-lora``."""
from __future__ import annotations

import argparse
import json

FORMAT_CHOICES = ("auto", "coco", "yolo", "voc", "masks")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert`` and ``inspect`` to the ``sam3-lora`` command line."""
    convert = subparsers.add_parser("convert", help="convert a Roboflow export (folder or .zip) to clean COCO")
    convert.add_argument("src", help="the Roboflow export: a folder or a .zip")
    convert.add_argument("dst", help="output folder (written as a whole, or not at all)")
    convert.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="export format (default: auto)")
    convert.add_argument("--link", action="store_true",
                         help="link images instead of copying them (hard links where the file system allows, "
                              "else symbolic links; editing a linked image in place edits the source, while a "
                              "source replaced by a new file later is seen by a symbolic link only)")
    convert.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")
    convert.add_argument("--strict", action="store_true", help="fail on any quirk that loses data")
    convert.add_argument("--allow-no-train", action="store_true", help="accept an export without train/")
    convert.add_argument("--json", action="store_true", help="print the report as JSON")
    convert.set_defaults(handler=run_convert)

    inspect = subparsers.add_parser("inspect", help="report what is in a dataset and what is wrong with it")
    inspect.add_argument("path", help="a Roboflow export (folder or .zip) or a COCO folder")
    inspect.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="export format (default: auto)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(handler=run_inspect)


def run_convert(args: argparse.Namespace) -> int:
    """Handler of ``sam3-lora convert``; returns the exit status."""
    from sam3_lora_kit.data.convert import convert_roboflow

    report = convert_roboflow(args.src, args.dst, format=args.format, link=args.link, overwrite=args.overwrite,
                              strict=args.strict, require_train=not args.allow_no_train)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    """Handler of ``sam3-lora inspect``; exit status 1 when the report has fatal problems."""
    from sam3_lora_kit.data.doctor import inspect_dataset

    report = inspect_dataset(args.path, format=args.format)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 1 if report.fatal else 0
