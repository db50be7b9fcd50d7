"""Synthetic patients and cohorts: images, tumour label, ki67 truth and biopsies. SYNTHETIC DATA.

``generate_patient`` draws one patient (covariates, anatomy, tumour, acquisition, biopsies) from a
generator; ``generate_cohort`` writes a whole cohort deterministically from a seed. The model is
documented in docs/phantom.md. Nothing here is patient data and nothing has clinical validity.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib import __version__
from KiMapLib.errors import KiMapError
from KiMapLib.features.neighbourhood import ball_offsets
from KiMapLib.inputs.biopsies import Biopsy, write_biopsies_csv
from KiMapLib.inputs.geometry import voxel_to_ras
from KiMapLib.phantom import fields, mri, scanner
from KiMapLib.progress import ProgressCallback, report

#: The sequences the phantom's signal model makes (no pre-contrast t1).
PHANTOM_SEQUENCES = ("t1c", "t2", "flair", "adc")

#: Version of the phantom model (bump when the equations or parameters change the data).
MODEL_VERSION = "1.0"
SYNTHETIC_NOTICE = "SYNTHETIC DATA — not patient data"
LABELS = {1: "necrotic core", 2: "enhancing rim", 3: "non-enhancing infiltrative edema"}

#: Biopsy sampling: share of each target region, minimum distance, brain depth and specimen radius.
BIOPSY_TARGETS = {"rim": 0.5, "perinecrotic": 0.2, "edema": 0.3}
BIOPSY_MIN_DISTANCE_MM = 6.0
BIOPSY_MIN_DEPTH_MM = 5.0
PERINECROTIC_MM = 3.0
SPECIMEN_RADIUS_MM = 2.0
MEASUREMENT_SD = 2.5  # ki67 %, pathology counting/sampling error
MISSING_AGE = 0.05


@dataclass
class PhantomPatient:
    """One synthetic patient on its own acquisition grid (all images LPS, one grid)."""

    patient_id: str
    institution: str
    images: dict[str, sitk.Image]
    label: sitk.Image
    ki67_truth: sitk.Image
    biopsies: list[Biopsy]
    covariates: dict[str, object]
    cell_density: sitk.Image | None = None
    tumour: fields.TumourParameters | None = None
    acquisition: scanner.Acquisition | None = None
    biopsy_regions: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """The per-patient record of cohort.json."""
        label = sitk.GetArrayViewFromImage(self.label)
        truth = sitk.GetArrayViewFromImage(self.ki67_truth)
        counts = {name: int(np.count_nonzero(label == value)) for value, name in
                  ((1, "necrotic"), (2, "enhancing"), (3, "edema"))}
        ki67_means = {name: round(float(truth[label == value].mean()), 3) if counts[name] else None
                      for value, name in ((1, "necrotic"), (2, "enhancing"), (3, "edema"))}
        record: dict[str, object] = {
            "patient_id": self.patient_id,
            "institution": self.institution,
            "covariates": {k: self.covariates.get(k) for k in ("sex", "age", "tumor_type")},
            "grid": self.acquisition.grid_dict() if self.acquisition else None,
            "tumor_voxels": counts,
            "ki67_truth_mean": ki67_means,
            "n_biopsies": len(self.biopsies),
            "biopsy_regions": list(self.biopsy_regions),
        }
        if self.tumour is not None:
            record["tumour"] = self.tumour.to_dict()
        if self.acquisition is not None:
            record["intensity"] = {
                "scale": {k: round(v, 4) for k, v in self.acquisition.scale.items()},
                "offset": {k: round(v, 3) for k, v in self.acquisition.offset.items()},
                "noise_sd": {k: round(v, 3) for k, v in self.acquisition.noise.items()},
            }
        return record


def draw_covariates(rng: np.random.Generator, institution: str) -> dict[str, object]:
    """Sex (60 % male), age ~ N(60, 12) in [18, 90] (5 % missing), 30 % recurrent tumours."""
    sex = "M" if rng.random() < 0.6 else "F"
    age: int | None = round(float(np.clip(rng.normal(60.0, 12.0), 18.0, 90.0)))
    if rng.random() < MISSING_AGE:
        age = None
    tumor_type = "recurrent" if rng.random() < 0.3 else "primary"
    return {"sex": sex, "age": age, "tumor_type": tumor_type, "institution": institution}


def _image(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(reference)
    return image


def _place_biopsies(rng: np.random.Generator, label: np.ndarray, depth: np.ndarray, truth: np.ndarray,
                    reference: sitk.Image, patient_id: str, covariates: dict[str, object]
                    ) -> tuple[list[Biopsy], list[str]]:
    """3-10 biopsies inside the tumour label, >= 6 mm apart, with ki67 = specimen mean + noise."""
    from scipy import ndimage  # imported on use: the other kimap commands never need it

    spacing_kji = np.array(reference.GetSpacing())[::-1]
    # distance (mm) to the necrotic core, computed in the tumour's bounding box only
    tumour = np.argwhere(label > 0)
    low = np.maximum(tumour.min(axis=0) - 4, 0)
    high = np.minimum(tumour.max(axis=0) + 5, label.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    near_necrosis = np.zeros(label.shape, dtype=bool)
    if np.any(label[box] == 1):
        distance = ndimage.distance_transform_edt(label[box] != 1, sampling=spacing_kji)
        near_necrosis[box] = distance <= PERINECROTIC_MM
    deep = depth >= BIOPSY_MIN_DEPTH_MM
    regions = {
        "rim": np.argwhere((label == 2) & ~near_necrosis & deep),
        "perinecrotic": np.argwhere((label == 2) & near_necrosis & deep),
        "edema": np.argwhere((label == 3) & deep),
    }
    names = [name for name in BIOPSY_TARGETS if len(regions[name])]
    if not names:
        raise KiMapError(f"patient {patient_id} has no tumour voxel deep enough for a biopsy", input_name="phantom")
    weights = np.array([BIOPSY_TARGETS[name] for name in names])
    weights /= weights.sum()
    n_biopsies = int(rng.integers(3, 11))
    specimen = ball_offsets(reference.GetSpacing(), SPECIMEN_RADIUS_MM)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    chosen_mm: list[np.ndarray] = []
    biopsies: list[Biopsy] = []
    chosen_regions: list[str] = []
    for _ in range(400):
        if len(biopsies) == n_biopsies:
            break
        name = names[int(rng.choice(len(names), p=weights))]
        kji = regions[name][int(rng.integers(len(regions[name])))]
        position = direction @ (kji[::-1] * spacing_kji[::-1])
        if any(np.linalg.norm(position - other) < BIOPSY_MIN_DISTANCE_MM for other in chosen_mm):
            continue
        points = specimen + kji
        points = points[np.all((points >= 0) & (points < label.shape), axis=1)]
        local = float(truth[points[:, 0], points[:, 1], points[:, 2]].mean())
        measured = float(np.clip(local + rng.normal(0.0, MEASUREMENT_SD), 0.0, 100.0))
        chosen_mm.append(position)
        chosen_regions.append(name)
        biopsies.append(Biopsy(
            patient_id=patient_id, biopsy_id=f"B{len(biopsies) + 1:02d}",
            ras=voxel_to_ras(reference, kji[::-1]), ki67=round(measured, 1), covariates=dict(covariates),
        ))
    return biopsies, chosen_regions


def generate_patient(patient_id: str, rng: np.random.Generator, institution: scanner.Institution | str,
                     *, covariates: dict[str, object] | None = None) -> PhantomPatient:
    """Draw one synthetic patient: images (t1c, t2, flair, adc; int16), label, ki67 truth and biopsies."""
    site = scanner.institution(institution) if isinstance(institution, str) else institution
    drawn = draw_covariates(rng, site.name)
    if covariates:
        drawn.update(covariates)
    covariates = drawn
    anatomy = fields.build_anatomy(rng, recurrent=covariates["tumor_type"] == "recurrent",
                                   age=covariates["age"])  # type: ignore[arg-type]
    signals = mri.intrinsic_signals(anatomy)
    acquisition = scanner.draw_acquisition(rng, site, anatomy.brain_centre)
    reference = acquisition.reference
    depth = scanner.sample(anatomy.depth, anatomy.origin, reference)
    # outside the lattice the resampler returns 0: mark it as outside the brain
    brain = depth > 0
    images = scanner.acquire(rng, acquisition, {s: signals[s] for s in PHANTOM_SEQUENCES}, anatomy.origin, brain,
                             anatomy.brain_centre)
    label = scanner.sample(anatomy.label, anatomy.origin, reference, nearest=True)
    label = np.where(brain, label, 0).astype(np.uint8)
    truth = np.where(brain, scanner.sample(anatomy.ki67, anatomy.origin, reference), 0.0).astype(np.float32)
    density = np.where(brain, scanner.sample(anatomy.density * (1.0 - anatomy.necrosis), anatomy.origin,
                                             reference), 0.0).astype(np.float32)
    biopsies, regions = _place_biopsies(rng, label, depth, truth, reference, patient_id, covariates)
    return PhantomPatient(
        patient_id=patient_id, institution=site.name, images=images, label=_image(label, reference),
        ki67_truth=_image(truth, reference), biopsies=biopsies, covariates=covariates,
        cell_density=_image(density, reference), tumour=anatomy.tumour, acquisition=acquisition,
        biopsy_regions=regions,
    )


def _uid(seed: int, patient_id: str, what: str) -> str:
    """A deterministic DICOM UID (2.25.<uuid5 as integer>) for this seed, patient and purpose."""
    digest = hashlib.sha1(f"kimap-phantom/{seed}/{patient_id}/{what}".encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=digest).int}"


def _write_dicom(patient: PhantomPatient, folder: Path, seed: int) -> None:
    from KiMapLib.inputs.dicom import write_mr_series  # optional dependency (pydicom), imported only here

    extra = {"sex": patient.covariates.get("sex"), "age": patient.covariates.get("age"), "study_date": "20000101"}
    for number, sequence in enumerate(PHANTOM_SEQUENCES, start=1):
        write_mr_series(
            patient.images[sequence], folder / "dicom" / sequence, patient_id=patient.patient_id,
            patient_name=f"SYNTHETIC^{patient.patient_id}", series_description=f"{sequence} (SYNTHETIC phantom)",
            study_uid=_uid(seed, patient.patient_id, "study"),
            frame_of_reference_uid=_uid(seed, patient.patient_id, "frame"), series_number=number,
            uid_seed=f"kimap-phantom/{seed}/{patient.patient_id}/{sequence}", **extra,
        )


def write_patient(patient: PhantomPatient, folder: str | Path) -> None:
    """Write ``{t1c,t2,flair,adc}.nrrd, tumor_label.nrrd, ki67_truth.nrrd, biopsies.csv`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for sequence in PHANTOM_SEQUENCES:
        sitk.WriteImage(patient.images[sequence], str(folder / f"{sequence}.nrrd"), useCompression=True)
    sitk.WriteImage(patient.label, str(folder / "tumor_label.nrrd"), useCompression=True)
    sitk.WriteImage(patient.ki67_truth, str(folder / "ki67_truth.nrrd"), useCompression=True)
    write_biopsies_csv(patient.biopsies, folder / "biopsies.csv")


def patient_ids(n_patients: int) -> list[str]:
    return [f"SYN{index + 1:03d}" for index in range(n_patients)]


def generate_cohort(out_dir: str | Path, n_patients: int, seed: int, *, dicom: bool = False,
                    progress: ProgressCallback | None = None) -> list[dict]:
    """Write a synthetic cohort into ``out_dir`` (replaced atomically); returns the per-patient records.

    Patient ``i`` uses generator ``SeedSequence(seed).spawn(n)[i]`` and institution ``INST-A..D`` round-robin,
    so the same seed gives the same bytes, and patient ``i`` does not depend on ``n_patients``.
    """
    from KiMapLib.atomic import atomic_directory

    if n_patients < 1:
        raise KiMapError(f"need at least one patient, got {n_patients}", input_name="--patients")
    out_dir = Path(out_dir)
    ids = patient_ids(n_patients)
    children = np.random.SeedSequence(int(seed)).spawn(n_patients)
    records: list[dict] = []
    all_biopsies: list[Biopsy] = []
    with atomic_directory(out_dir, "phantom cohort") as staging:
        for index, (patient_id, child) in enumerate(zip(ids, children, strict=True)):
            report(progress, index / n_patients, f"patient {patient_id}")
            site = scanner.INSTITUTIONS[index % len(scanner.INSTITUTIONS)]
            patient = generate_patient(patient_id, np.random.default_rng(child), site)
            write_patient(patient, staging / patient_id)
            if dicom:
                _write_dicom(patient, staging / patient_id, int(seed))
            records.append(patient.summary())
            all_biopsies.extend(patient.biopsies)
        report(progress, 1.0, "writing cohort tables")
        write_biopsies_csv(all_biopsies, staging / "biopsies.csv")
        document = {
            "notice": SYNTHETIC_NOTICE,
            "description": "KiMap biophysical glioblastoma phantom (docs/phantom.md); no clinical validity.",
            "generator": "KiMapLib.phantom",
            "model_version": MODEL_VERSION,
            "kimap_version": __version__,
            "seed": int(seed),
            "n_patients": n_patients,
            "labels": {str(k): v for k, v in LABELS.items()},
            "units": {"ki67": "%", "adc": "1e-6 mm^2/s (times the site's adc_scale, plus adc_offset)",
                      "coordinates": "biopsies.csv in RAS mm; images LPS (ITK)"},
            "institutions": {site.name: site.to_dict() for site in scanner.INSTITUTIONS},
            "patients": records,
        }
        (staging / "cohort.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    return records

