"""Opening the cohort database: a SQLite file by path, or PostgreSQL by URL; same tables, same code.

:func:`open_store` checks the schema version before anything is read: an empty database gets the current tables
(``create=True``), an older one is upgraded in one transaction (:mod:`~KiMapLib.cohort.migrations`), a newer one or
a database that is not KiMap's is refused with one line. On SQLite every transaction starts with ``BEGIN
IMMEDIATE`` (one writer at a time, DDL inside transactions), foreign keys are enforced, and the default rollback
journal keeps every commit whole through a crash or ``kill -9``.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import URL, Connection, Engine, create_engine, event, insert, inspect, make_url, select, text
from sqlalchemy.exc import ArgumentError, DBAPIError

from KiMapLib import __version__
from KiMapLib.cohort import migrations, schema
from KiMapLib.cohort.settings_identity import settings_digest, settings_json
from KiMapLib.errors import KiMapError
from KiMapLib.settings import ExtractionSettings

#: Environment variable naming the database when ``--db`` is not given.
DB_ENVIRONMENT = "KIMAP_DB"
SQLITE_TIMEOUT_S = 60.0


def now() -> str:
    """The current UTC time as stored in the database (ISO 8601, seconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def database_url(text_or_path: str | Path) -> URL:
    """A SQLAlchemy URL from ``postgresql://...``, ``sqlite:///...`` or a plain file path (SQLite)."""
    value = str(text_or_path).strip()
    if not value:
        raise KiMapError("no database given", input_name="--db",
                         hint=f"give a SQLite file path or a postgresql:// URL (or set {DB_ENVIRONMENT})")
    if "://" not in value:
        return URL.create("sqlite", database=str(Path(value).expanduser().resolve()))
    try:
        url = make_url(value)
    except ArgumentError:
        raise KiMapError(f"'{value}' is not a database URL", input_name="--db",
                         hint="e.g. postgresql://user@host:5432/kimap or a SQLite file path") from None
    backend = url.get_backend_name()
    if backend == "postgres":
        url = url.set(drivername="postgresql")
        backend = "postgresql"
    if backend == "postgresql" and url.get_driver_name() in ("", "psycopg2"):
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is the pinned driver
    if backend not in ("sqlite", "postgresql"):
        raise KiMapError(f"unsupported database '{backend}'", input_name="--db",
                         hint="use a SQLite file path or a postgresql:// URL")
    return url


def shown(url: URL) -> str:
    """The URL as printed to the user (password hidden)."""
    return url.render_as_string(hide_password=True)


def _sqlite_engine(url: URL, create: bool) -> Engine:
    path = Path(url.database or "")
    if url.database in (None, "", ":memory:"):
        raise KiMapError("an in-memory SQLite database cannot be shared with later runs", input_name="--db",
                         hint="give a file path")
    if not path.exists():
        if not create:
            raise KiMapError(f"no database at {path}", input_name="--db",
                             hint="run `kimap cohort import --cohort DIR --db PATH` first")
        if not path.parent.is_dir():
            raise KiMapError(f"folder {path.parent} does not exist", input_name="--db")
    engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # the driver issues no BEGIN of its own; ours is below
        dbapi_connection.execute("PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@dataclass
class Store:
    """An open cohort database at the current schema version."""

    engine: Engine
    url: URL
    notes: list[str] = field(default_factory=list)

    @property
    def shown_url(self) -> str:
        return shown(self.url)

    def begin(self):
        """A transaction (``with store.begin() as connection:``): committed whole on success, else rolled back."""
        return self.engine.begin()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def _check_schema(connection: Connection, url: URL, create: bool) -> list[str]:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(7060402)"))  # one client creates or upgrades at a time
    tables = set(inspect(connection).get_table_names())
    if schema.meta.name not in tables:
        if tables:
            raise KiMapError(f"{shown(url)} is not a KiMap cohort database (it has tables "
                             f"{', '.join(sorted(tables)[:4])}, no {schema.meta.name})", input_name="--db",
                             hint="give a new database or one made by `kimap cohort import`")
        if not create:
            raise KiMapError(f"{shown(url)} holds no cohort yet", input_name="--db",
                             hint="run `kimap cohort import --cohort DIR --db ...` first")
        schema.metadata.create_all(connection)
        connection.execute(insert(schema.meta), [{"key": "schema_version", "value": str(schema.SCHEMA_VERSION)},
                                                 {"key": "created_by", "value": f"KiMap {__version__}"},
                                                 {"key": "created_at", "value": now()}])
        return []
    value = connection.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).scalar()
    try:
        version = int(value or "")
    except ValueError:
        raise KiMapError(f"{shown(url)} has no valid schema_version ({value!r})", input_name="--db") from None
    if version > schema.SCHEMA_VERSION:
        raise KiMapError(f"{shown(url)} has cohort schema v{version}, newer than this KiMap {__version__} reads "
                         f"(v{schema.SCHEMA_VERSION})", input_name="--db",
                         hint="upgrade KiMap to use it; nothing was read or changed")
    if version < 1:
        raise KiMapError(f"{shown(url)} has an unknown cohort schema v{version}", input_name="--db")
    return migrations.upgrade(connection, version)


def open_store(database: str | Path | None, *, create: bool = False) -> Store:
    """Open (``create``: or make) the cohort database ``database`` (path or URL; default ``$KIMAP_DB``)."""
    url = database_url(database if database is not None else os.environ.get(DB_ENVIRONMENT, ""))
    if url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url, create)
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except ImportError as error:
            raise KiMapError(f"the PostgreSQL driver is not installed ({error.name})", input_name="--db",
                             hint="pip install 'psycopg[binary]' (pinned in requirements.txt)") from None
    try:
        with engine.begin() as connection:
            notes = _check_schema(connection, url, create)
    except DBAPIError as error:
        engine.dispose()
        reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
        raise KiMapError(f"cannot open {shown(url)} ({reason})", input_name="--db",
                         hint="check the URL, the server and the credentials") from None
    except BaseException:
        engine.dispose()
        raise
    return Store(engine=engine, url=url, notes=notes)


def settings_id(connection: Connection, settings: ExtractionSettings, pyradiomics_version: str) -> int:
    """The id of this settings set, added when new (one row per distinct settings and pyradiomics version)."""
    table = schema.extraction_settings
    digest = settings_digest(settings, pyradiomics_version)
    found = connection.execute(select(table.c.id).where(table.c.digest == digest)).scalar()
    if found is not None:
        return int(found)
    return int(connection.execute(insert(table).values(
        settings=settings_json(settings), pyradiomics_version=pyradiomics_version, created_at=now(),
        digest=digest)).inserted_primary_key[0])


def settings_of(connection: Connection, settings_row_id: int) -> ExtractionSettings:
    table = schema.extraction_settings
    stored = connection.execute(select(table.c.settings).where(table.c.id == settings_row_id)).scalar()
    if stored is None:
        raise KiMapError(f"no extraction settings #{settings_row_id} in the database", input_name="--settings",
                         hint="`kimap cohort status` lists them")
    return ExtractionSettings.from_dict(json.loads(stored))
