"""Sizes checked before anything is allocated: the memory budget and the caps on what one input may demand.

A volume, a case on the t1c grid or a ball whose estimated size exceeds its limit is refused with one line giving
the estimate and the limit, before any array of that size exists (an absurd header or spacing must not exhaust the
machine's memory first and fail later).

The memory budget is half of the machine's physical memory (8 GiB where that cannot be read), or the number of GiB
in the ``KIMAP_MEMORY_LIMIT_GB`` environment variable.
"""

from __future__ import annotations

import os

from KiMapLib.errors import KiMapError

MEMORY_LIMIT_ENV = "KIMAP_MEMORY_LIMIT_GB"
#: Share of physical memory one KiMap computation may plan to use.
MEMORY_FRACTION = 0.5
#: Budget when the physical memory cannot be read (e.g. on Windows without os.sysconf).
FALLBACK_MEMORY_BYTES = 8 * 2**30

GIB = 2**30


def physical_memory_bytes() -> int | None:
    """Total physical memory, or None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_budget_bytes() -> int:
    """Bytes one computation may plan to allocate (see the module docstring)."""
    override = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if override:
        try:
            gigabytes = float(override)
        except ValueError:
            gigabytes = float("nan")
        if not gigabytes > 0 or gigabytes == float("inf"):
            raise KiMapError(f"'{override}' is not a positive number of GiB", input_name=MEMORY_LIMIT_ENV,
                             hint=f"e.g. {MEMORY_LIMIT_ENV}=16, or unset it for half the physical memory")
        return int(gigabytes * GIB)
    physical = physical_memory_bytes()
    return int(physical * MEMORY_FRACTION) if physical else FALLBACK_MEMORY_BYTES


def describe_bytes(count: float) -> str:
    """``123 MiB``, ``59.7 GiB``: a size for messages."""
    for unit, size in (("TiB", 2**40), ("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{int(count)} bytes"


def check_memory(estimate_bytes: float, what: str, input_name: str, hint: str | None = None) -> None:
    """Refuse a planned allocation of ``estimate_bytes`` for ``what`` above :func:`memory_budget_bytes`."""
    budget = memory_budget_bytes()
    if estimate_bytes > budget:
        raise KiMapError(
            f"{what} would need about {describe_bytes(estimate_bytes)} of memory, more than KiMap's limit of "
            f"{describe_bytes(budget)}", input_name=input_name,
            hint=hint or f"check the input; on a larger machine raise the limit with {MEMORY_LIMIT_ENV}=GiB")
