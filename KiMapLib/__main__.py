"""`python -m KiMapLib` runs the `kimap` command line."""

from KiMapLib.cli import run

run()
