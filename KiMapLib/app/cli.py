"""The ``kimap`` command line: phantom, extract, train, map, export, bench-maps, demo."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from KiMapLib.atomic import Terminated, install_termination_handler, restore_termination_handler
from KiMapLib.errors import Cancelled, KiMapError

#: Modules that add their own sub-command through ``add_parser(subparsers)`` (some are optional).
SUBCOMMAND_MODULES = ("KiMapLib.app.phantom_command", "KiMapLib.app.commands", "KiMapLib.app.segment_command",
                      "KiMapLib.app.export_command",
                      "KiMapLib.app.bench_maps", "KiMapLib.app.demo")


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimap", description="ki67 maps of glioblastoma from MRI radiomics "
                                     "(research use only).")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            if error.name and error.name.startswith("KiMapLib"):
                continue  # an optional part that is not installed
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = install_termination_handler()
    try:
        return int(args.func(args) or 0)
    except KiMapError as error:
        print(f"kimap {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"kimap {args.command}: terminated (SIGTERM); nothing was written", file=sys.stderr)
        return 143
    except (Cancelled, KeyboardInterrupt):
        print(f"kimap {args.command}: cancelled; nothing was written", file=sys.stderr)
        return 130
    finally:
        restore_termination_handler(previous)


def run() -> None:
    """The ``kimap`` executable: :func:`main`, then exit at once once every output is flushed.

    The interpreter's own teardown (numba's compiled code, the scientific modules) takes about half a second after
    the work is done and written; ``os._exit`` skips it. Files are closed by the commands themselves. The process is
    KiMap's own, so skops loads without its default estimator trust list (``skops_import.claim_process``)."""
    import logging
    import os

    from KiMapLib.model.skops_import import claim_process

    claim_process()
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path
