"""The cohort database's tables (SQLAlchemy Core), schema version :data:`SCHEMA_VERSION`.

One row per patient, image series, biopsy, distinct extraction settings, feature row (biopsy x settings), model,
map (patient x model), run and per-patient run outcome. JSON documents (geometry, settings, feature values, model
cards, map summaries) are stored as text written by ``json.dumps``: floats round-trip exactly and key order is
kept, on SQLite and PostgreSQL alike. Times are ISO-8601 UTC strings.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

#: Version of the tables below; bump it with a migration in :mod:`KiMapLib.cohort.migrations`.
SCHEMA_VERSION = 2

metadata = MetaData()

#: ``schema_version`` (and who created the database) as key/value text.
meta = Table(
    "kimap_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

patients = Table(
    "patients", metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_key", String(200), nullable=False, unique=True),
    Column("sex", String(8)),
    Column("age", Double),
    Column("tumor_type", String(16)),
    Column("source", Text, nullable=False),  # the cohort folder or manifest it was imported from
    Column("imported_at", String(32), nullable=False),
)

image_series = Table(
    "image_series", metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", Integer, ForeignKey("patients.id"), nullable=False),
    Column("sequence", String(16), nullable=False),  # t1c, t2, flair, adc, or region (a tumour label for maps)
    Column("path", Text, nullable=False),  # absolute; the same path on every worker (shared storage)
    Column("sha256", String(64), nullable=False),  # of the file, or of a DICOM folder's files (see series.py)
    Column("geometry", Text, nullable=False),  # JSON: size, spacing, origin, direction (ITK, LPS), pixel type
    Column("source_uids", Text),  # JSON: Study/Series/FrameOfReference UIDs of a DICOM series, else NULL
    Column("imported_at", String(32), nullable=False),
    UniqueConstraint("patient_id", "sequence"),
)

biopsies = Table(
    "biopsies", metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", Integer, ForeignKey("patients.id"), nullable=False),
    Column("biopsy_key", String(200), nullable=False),
    Column("position", Integer, nullable=False),  # order in the biopsies file (the cohort table's row order)
    Column("r", Double, nullable=False),
    Column("a", Double, nullable=False),
    Column("s", Double, nullable=False),
    Column("ki67", Double),
    Column("institution", String(200)),
    UniqueConstraint("patient_id", "biopsy_key"),
)

extraction_settings = Table(
    "extraction_settings", metadata,
    Column("id", Integer, primary_key=True),
    Column("settings", Text, nullable=False),  # JSON of ExtractionSettings.to_dict()
    Column("pyradiomics_version", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("digest", String(64)),  # v2: sha256 of the settings and pyradiomics version (unique index below)
)
Index("ix_extraction_settings_digest", extraction_settings.c.digest, unique=True)

runs = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True),
    Column("command", String(32), nullable=False),  # extract, map
    Column("arguments", Text, nullable=False),  # JSON: settings id or model id, workers, scheduler, ...
    Column("started_at", String(32), nullable=False),
    Column("ended_at", String(32)),
    Column("status", String(16), nullable=False),  # running, done, failed, cancelled, interrupted
    Column("error", Text),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("kimap_version", String(32), nullable=False),
    Column("patients_total", Integer, nullable=False),
    Column("patients_done", Integer, nullable=False),
    Column("patients_failed", Integer, nullable=False),
)

run_patients = Table(
    "run_patients", metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("patient_id", Integer, ForeignKey("patients.id"), nullable=False),
    Column("status", String(16), nullable=False),  # done, failed
    Column("error", Text),
    Column("seconds", Double),
    Column("finished_at", String(32), nullable=False),
    Column("worker", String(255)),  # v2: the Dask worker (or host:pid) that computed it
)

features = Table(
    "features", metadata,
    Column("id", Integer, primary_key=True),
    Column("biopsy_id", Integer, ForeignKey("biopsies.id"), nullable=False),
    Column("settings_id", Integer, ForeignKey("extraction_settings.id"), nullable=False),
    Column("status", String(8), nullable=False),  # ok, failed (a point outside the volume: kept out of the table)
    Column("voxel_i", Integer),
    Column("voxel_j", Integer),
    Column("voxel_k", Integer),
    Column("feature_values", Text),  # JSON object {<sequence>_original_<class>_<feature>: value} in pyradiomics order
    Column("error", Text),
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("biopsy_id", "settings_id"),
)

models = Table(
    "models", metadata,
    Column("id", Integer, primary_key=True),
    Column("model_key", String(200), nullable=False),  # the card's model_id
    Column("sha256", String(64), nullable=False, unique=True),  # of model.skops, as pinned by the card
    Column("card", Text, nullable=False),  # JSON model card
    Column("path", Text, nullable=False),
    Column("registered_at", String(32), nullable=False),
)

maps = Table(
    "maps", metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_id", Integer, ForeignKey("patients.id"), nullable=False),
    Column("model_id", Integer, ForeignKey("models.id"), nullable=False),
    Column("out_dir", Text, nullable=False),
    Column("files", Text, nullable=False),  # JSON {file name: sha256}
    Column("summary", Text, nullable=False),  # JSON summary.json of the map
    Column("run_id", Integer, ForeignKey("runs.id"), nullable=False),
    Column("created_at", String(32), nullable=False),
    UniqueConstraint("patient_id", "model_id"),
)
