"""Schema migrations: each step upgrades a database by one version inside the caller's transaction.

A database records its version in ``kimap_meta.schema_version``. :func:`upgrade` runs the steps from that version
up to :data:`~KiMapLib.cohort.schema.SCHEMA_VERSION` in one transaction (SQLite and PostgreSQL both roll DDL back),
so a failed upgrade leaves the database exactly as it was. A database newer than this KiMap is refused by the store
before anything is read.

History:

- v1: the first cohort store.
- v2: ``extraction_settings.digest`` (sha256 of the settings and pyradiomics version, unique; backfilled from the
  stored settings) and ``run_patients.worker`` (which Dask worker computed a patient; NULL for earlier runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import Connection, select, text, update

from KiMapLib.cohort import schema
from KiMapLib.cohort.settings_identity import settings_digest
from KiMapLib.errors import KiMapError
from KiMapLib.settings import ExtractionSettings


def _v1_to_v2(connection: Connection) -> None:
    connection.execute(text("ALTER TABLE extraction_settings ADD COLUMN digest VARCHAR(64)"))
    table = schema.extraction_settings
    seen: dict[str, int] = {}
    for row in connection.execute(select(table.c.id, table.c.settings, table.c.pyradiomics_version)):
        settings = ExtractionSettings.from_dict(json.loads(row.settings))
        digest = settings_digest(settings, row.pyradiomics_version)
        if digest in seen:
            raise KiMapError(f"settings rows {seen[digest]} and {row.id} hold the same extraction settings",
                             input_name="--db", hint="the database was edited by hand; nothing was changed")
        seen[digest] = row.id
        connection.execute(update(table).where(table.c.id == row.id).values(digest=digest))
    connection.execute(text("CREATE UNIQUE INDEX ix_extraction_settings_digest ON extraction_settings (digest)"))
    connection.execute(text("ALTER TABLE run_patients ADD COLUMN worker VARCHAR(255)"))


#: ``MIGRATIONS[v]`` upgrades a version-``v`` database to ``v + 1``.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2}


def upgrade(connection: Connection, version: int) -> list[str]:
    """Upgrade from ``version`` to the current schema; returns one note per step (for the user)."""
    notes = []
    while version < schema.SCHEMA_VERSION:
        MIGRATIONS[version](connection)
        version += 1
        connection.execute(update(schema.meta).where(schema.meta.c.key == "schema_version")
                           .values(value=str(version)))
        notes.append(f"upgraded the cohort database schema from v{version - 1} to v{version}")
    return notes
