"""matplotlib for every picture KiMap draws, on the Agg backend (no display needed), imported only when drawing."""

from __future__ import annotations


def pyplot():
    """matplotlib's pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
