"""The ``sam3-lora`` command line: one entry point, subcommands registered by each area.

Each area module exposes ``register(subparsers)`` which adds its subcommands; a subcommand's
handler takes the parsed ``argparse.Namespace`` and returns an exit status. Errors that the
kit raises on bad input (``KitError`` and its subclasses, ``FileNotFoundError``, ``ValueError``)
are printed on one line without a traceback unless ``--debug`` is given.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

# Modules that add subcommands; imported only when the command line runs.
_COMMAND_MODULES = (
    "sam3_lora_kit.data.commands",
    "sam3_lora_kit.train.commands",
    "sam3_lora_kit.evaluate.commands",
    "sam3_lora_kit.ledger",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3-lora", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # that area is not written yet
                continue
            raise
        module.register(subparsers)
    return parser


class _Terminated(BaseException):
    """SIGTERM (a job scheduler, ``kill``), raised like Ctrl-C so clean-up code runs."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("sam3-lora: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("sam3-lora: terminated", file=sys.stderr)
        return 143
    except Exception as error:  # one line for users, the traceback with --debug
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__  # always one line
        print(f"sam3-lora {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
