"""The cohort table from the store: the same rows, columns and values ``kimap extract --cohort`` writes.

Rows are patients by key (sorted as ``kimap extract`` sorts the patient folders), biopsies in file order; each row
is the biopsy's identity and covariates (:meth:`~KiMapLib.inputs.biopsies.Biopsy.row`), its voxel and its features
in pyradiomics' order. Biopsies whose extraction failed are left out, as ``kimap extract`` leaves them out.
"""

from __future__ import annotations

import json

import numpy as np
from sqlalchemy import Connection, select

from KiMapLib.cohort import schema
from KiMapLib.cohort.batch_extract import biopsy_query
from KiMapLib.cohort.store import settings_of
from KiMapLib.errors import KiMapError
from KiMapLib.inputs.biopsies import Biopsy
from KiMapLib.settings import ExtractionSettings


def describe_settings(settings: ExtractionSettings) -> str:
    return f"ball {settings.ball_radius_mm:g} mm, bin width {settings.bin_width:g}"


def choose_settings(connection: Connection, settings_row_id: int | None = None) -> tuple[int, ExtractionSettings]:
    """The settings set to read: the one given, else the only one with extracted features."""
    if settings_row_id is not None:
        return settings_row_id, settings_of(connection, settings_row_id)
    table = schema.features
    used = connection.execute(select(table.c.settings_id).where(table.c.status == "ok")
                              .group_by(table.c.settings_id).order_by(table.c.settings_id)).scalars().all()
    if not used:
        raise KiMapError("no features in the database yet", input_name="--db", hint="run `kimap cohort extract` first")
    if len(used) > 1:
        listed = "; ".join(f"#{i} ({describe_settings(settings_of(connection, i))})" for i in used)
        raise KiMapError(f"features with {len(used)} settings sets: {listed}", input_name="--settings",
                         hint="choose one with --settings ID")
    return int(used[0]), settings_of(connection, int(used[0]))


def cohort_rows(connection: Connection, settings_row_id: int) -> list[dict]:
    """Cohort-table rows of every biopsy extracted with these settings (the order ``kimap extract`` writes)."""
    features = schema.features
    query = (biopsy_query().add_columns(features.c.voxel_i, features.c.voxel_j, features.c.voxel_k,
                                        features.c.feature_values)
             .join(features, features.c.biopsy_id == schema.biopsies.c.id)
             .where(features.c.settings_id == settings_row_id, features.c.status == "ok"))
    records = sorted(connection.execute(query), key=lambda r: (r.patient_key, r.position, r.biopsy_key))
    rows = []
    for record in records:
        biopsy = Biopsy(patient_id=record.patient_key, biopsy_id=record.biopsy_key,
                        ras=np.array([record.r, record.a, record.s]), ki67=record.ki67,
                        covariates={"sex": record.sex, "age": record.age, "tumor_type": record.tumor_type,
                                    "institution": record.institution})
        row = biopsy.row()
        row.update({"voxel_i": record.voxel_i, "voxel_j": record.voxel_j, "voxel_k": record.voxel_k})
        row.update(json.loads(record.feature_values))
        rows.append(row)
    return rows

