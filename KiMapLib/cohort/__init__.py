"""Cohorts at scale: a feature database and resumable batch extraction and mapping on Dask.

Takes patient folders (the phantom's layout) or a manifest CSV of image series and biopsy files, extraction
settings and model bundles; gives a versioned SQLAlchemy store (SQLite file or PostgreSQL URL) of patients, image
series (path, sha256, geometry, source UIDs), biopsies, settings, features, models, maps and runs
(:mod:`~KiMapLib.cohort.store`, :mod:`~KiMapLib.cohort.schema`, :mod:`~KiMapLib.cohort.migrations`), registered by
:mod:`~KiMapLib.cohort.importing`; batches that compute features and maps per patient on Dask workers while only
the client writes (:mod:`~KiMapLib.cohort.batch`, :mod:`~KiMapLib.cohort.tasks`), and the cohort table
`kimap extract --cohort` writes, read back from the store (:mod:`~KiMapLib.cohort.table`). Uses features, model
and maps; used by the ``kimap cohort`` commands in ``KiMapLib.app``.
"""
