"""`python -m KiMapLib` runs the `kimap` command line."""

from KiMapLib.app.cli import run

run()
