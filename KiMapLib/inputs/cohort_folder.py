"""The cohort folder layout: one folder per patient with ``<sequence>.nrrd`` files and ``biopsies.csv``.

This is what ``kimap phantom`` writes and what ``kimap extract --cohort`` and ``kimap cohort import --cohort`` read.
"""

from __future__ import annotations

from pathlib import Path

from KiMapLib.errors import KiMapError
from KiMapLib.settings import SEQUENCES

BIOPSIES_FILE = "biopsies.csv"
#: A tumour label beside the sequences (the phantom writes it); ``kimap cohort map`` maps inside it.
REGION_FILE = "tumor_label.nrrd"


def cohort_folder_patients(folder: Path) -> list[tuple[str, dict[str, Path], Path]]:
    """``(patient folder name, {sequence: path}, biopsies.csv)`` of every patient folder, sorted by name."""
    if not folder.is_dir():
        raise KiMapError(f"not a folder: {folder}", input_name="--cohort")
    patients = []
    for patient in sorted(p for p in folder.iterdir() if (p / BIOPSIES_FILE).is_file()):
        volumes = {name: patient / f"{name}.nrrd" for name in SEQUENCES if (patient / f"{name}.nrrd").is_file()}
        patients.append((patient.name, volumes, patient / BIOPSIES_FILE))
    if not patients:
        raise KiMapError(f"no patient folders with {BIOPSIES_FILE} in {folder}", input_name="--cohort")
    return patients
