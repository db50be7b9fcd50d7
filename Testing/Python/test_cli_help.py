"""Every option of every ``kimap`` sub-command explains itself and shows its default in ``--help``."""

from __future__ import annotations

import argparse
import re

import pytest

from KiMapLib.app.cli import HelpFormatter, build_parser

EXPECTED_COMMANDS = {"phantom", "extract", "segment", "train", "predict", "map", "export", "bench-maps", "demo",
                     "cohort", "web"}


def commands(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every (sub-)command by its full name: ``map``, ``cohort extract``, ..."""
    parser = parser or build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                found[f"{prefix}{name}"] = subparser
                found.update(commands(subparser, f"{prefix}{name} "))
    return found


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return {name: parser for name, parser in commands().items() if " " not in name}


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_subcommand_is_there():
    assert set(subcommands()) == EXPECTED_COMMANDS
    assert {"cohort import", "cohort extract", "cohort map", "cohort status", "cohort table"} <= set(commands())


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_option_has_help_that_shows_its_default(name):
    parser = commands()[name]
    assert parser.formatter_class is HelpFormatter
    formatter = parser._get_formatter()
    missing = []
    for action in options(parser):
        if not action.help:
            missing.append(f"{'/'.join(action.option_strings)}: no help text")
            continue
        shown = formatter._expand_help(action)
        if not action.required and not re.search(r"\b(default|required)\b", shown, re.IGNORECASE):
            missing.append(f"{'/'.join(action.option_strings)}: help does not show the default ({shown!r})")
    assert not missing, f"kimap {name}:\n" + "\n".join(missing)


def test_rendered_help_shows_defaults_and_flags():
    text = subcommands()["extract"].format_help()
    assert "(default: 5.0)" in " ".join(text.split())  # --radius
    web = " ".join(subcommands()["web"].format_help().split())
    assert "(default: 8080)" in web and "(default: 127.0.0.1)" in web
    bench = " ".join(subcommands()["bench-maps"].format_help().split())
    assert "(default: off)" in bench  # --zscore, a flag


def test_help_of_every_subcommand_renders(capsys):
    for name in commands():
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args([*name.split(), "--help"])
        assert stop.value.code == 0
        assert "usage: kimap " + name in capsys.readouterr().out
