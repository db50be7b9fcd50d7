"""The ``kimap`` command line: phantom, extract, segment, train, map, export, bench-maps, demo, cohort, web."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from KiMapLib.atomic import Terminated, install_termination_handler, restore_termination_handler
from KiMapLib.errors import Cancelled, KiMapError

#: Modules that add their own sub-command through ``add_parser(subparsers)`` (some are optional).
SUBCOMMAND_MODULES = ("KiMapLib.app.phantom_command", "KiMapLib.app.commands", "KiMapLib.app.predict_command",
                      "KiMapLib.app.segment_command",
                      "KiMapLib.app.export_command", "KiMapLib.app.bench_maps", "KiMapLib.app.demo",
                      "KiMapLib.app.cohort_command", "KiMapLib.app.web_command")


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default: ``(default: 5.0)``, ``(default: off)`` for a flag. Required
    options and options whose help already says what the default is (``(default: the packaged model)``) are left
    as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.default is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)" if action.default is not None else text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kimap", description="ki67 maps of glioblastoma from MRI radiomics "
                                     "(research use only).", formatter_class=HelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            if error.name and error.name.startswith("KiMapLib"):
                continue  # an optional part that is not installed
            raise
        module.add_parser(subparsers)
    _use_formatter(parser)
    return parser


def _use_formatter(parser: argparse.ArgumentParser) -> None:
    """:class:`HelpFormatter` for ``parser`` and every sub-command below it (``kimap cohort extract`` too)."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                _use_formatter(subparser)


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
