"""Progress reporting and cancellation shared by the CLI (tqdm) and Slicer (progress dialog)."""

from __future__ import annotations

from collections.abc import Callable

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
