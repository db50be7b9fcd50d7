"""The one exception family KiMap raises for bad input: one line, naming the input and what to do."""

from __future__ import annotations


class KiMapError(ValueError):
    """Bad input or state: ``str(error)`` is a one-line message naming the input and the remedy."""

    def __init__(self, message: str, *, input_name: str | None = None, hint: str | None = None):
        self.input_name = input_name
        self.hint = hint
        text = f"{input_name}: {message}" if input_name else message
        if hint:
            text = f"{text} — {hint}"
        super().__init__(text)


class GeometryError(KiMapError):
    """Volumes that do not share physical space, or a grid that cannot be used."""


class BiopsyError(KiMapError):
    """One biopsy point that cannot be extracted (outside the image, too few foreground voxels)."""


class FieldOfViewError(BiopsyError):
    """A point whose ball leaves the field of view of one sequence: that sequence's features are missing there."""

    def __init__(self, message: str, *, sequence: str, input_name: str | None = None, hint: str | None = None):
        self.sequence = sequence
        super().__init__(message, input_name=input_name, hint=hint)


class ModelError(KiMapError):
    """A model bundle that is missing, tampered with, or needs inputs that were not given."""


class Cancelled(Exception):
    """The user cancelled a long computation; nothing partial was written."""
