"""Progress reporting and cancellation shared by the CLI (a text bar), Slicer (progress dialog) and the web app."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from KiMapLib.errors import Cancelled

#: ``progress(fraction, message) -> bool | None``; returning ``False`` cancels the computation.
ProgressCallback = Callable[[float, str], "bool | None"]


def report(progress: ProgressCallback | None, fraction: float, message: str = "") -> None:
    """Call ``progress`` if given; raise :class:`Cancelled` when it returns ``False``."""
    if progress is not None and progress(min(max(fraction, 0.0), 1.0), message) is False:
        raise Cancelled(message or "cancelled")


def scaled(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """A callback mapping [0, 1] of a sub-step onto [start, stop] of the parent's progress."""
    if progress is None:
        return None

    def sub(fraction: float, message: str = "") -> bool | None:
        return progress(start + (stop - start) * fraction, message)

    return sub


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[ProgressCallback]:
    """A progress callback drawing a percent bar on stderr, and one final line when the step is done.

    On a terminal the bar redraws in place; in a log (stderr not a terminal) it prints a line at every 10 %, so the
    log stays readable."""
    terminal = sys.stderr.isatty()
    start = time.monotonic()
    last = {"decile": -1}

    def callback(fraction: float, message: str = "") -> None:
        percent = int(fraction * 100)
        if terminal:
            bar = "#" * (percent // 5)
            print(f"\r{description}: {percent:3d}% |{bar:<20}| {time.monotonic() - start:5.1f} s {message[:40]:<40}",
                  end="", file=sys.stderr, flush=True)
        elif percent // 10 > last["decile"]:
            last["decile"] = percent // 10
            print(f"{description}: {percent:3d}% {message[:60]}".rstrip(), file=sys.stderr, flush=True)

    outcome = "stopped"
    try:
        yield callback
        outcome = "done"
    finally:
        prefix = "\r" if terminal else ""
        print(f"{prefix}{description}: {outcome} after {time.monotonic() - start:.1f} s".ljust(80 if terminal else 0),
              file=sys.stderr, flush=True)
