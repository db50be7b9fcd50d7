"""Shared test fixtures: small synthetic cases built on the fly (oblique, anisotropic grids)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from KiMapLib.inputs.biopsies import Biopsy  # noqa: E402
from KiMapLib.inputs.geometry import voxel_to_ras  # noqa: E402


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    """A proper rotation (oblique direction matrix)."""
    z, x = np.radians(degrees_z), np.radians(degrees_x)
    rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    return rz @ rx


def make_volume(array_kji: np.ndarray, spacing=(0.9, 1.1, 1.6), direction=None, origin=(12.0, -30.0, 5.0)):
    image = sitk.GetImageFromArray(array_kji.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetDirection((rotation(20, 10) if direction is None else direction).ravel().tolist())
    image.SetOrigin(origin)
    return image


def synthetic_patient(seed: int, shape=(24, 36, 36), spacing=(0.9, 1.1, 1.6)) -> dict:
    """Four sequences of a blob 'tumor' in a brain-like ellipsoid; ki67 truth follows t1c texture/intensity.

    Returns dict(volumes=..., truth=array, label=image, biopsies=[Biopsy]).
    """
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = np.array(shape) / 2 + rng.normal(0, 1, 3)
    physical = np.stack([(k - centre[0]) * spacing[2], (j - centre[1]) * spacing[1], (i - centre[2]) * spacing[0]])
    radius = np.sqrt((physical**2).sum(axis=0))
    brain = (physical[0] / (shape[0] * spacing[2] * 0.48)) ** 2 + (physical[1] / (shape[1] * spacing[1] * 0.48)) ** 2 \
        + (physical[2] / (shape[2] * spacing[0] * 0.48)) ** 2 < 1
    tumour = radius < 9 + rng.uniform(-1, 2)
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32)), 2.0))
    smooth = (smooth - smooth.mean()) / smooth.std()
    truth = np.where(tumour, np.clip(25 + 10 * smooth + rng.normal(0, 3), 0, 100), 0.0)
    noise = rng.normal(size=(4, *shape))
    t1c = 100 + 40 * tumour * (1 + 0.03 * truth) + noise[0] * (5 + 0.4 * truth)
    t2 = 120 + 60 * tumour + noise[1] * 6
    flair = 90 + 70 * (radius < 13) + noise[2] * 6
    adc = 800 - 6 * truth + noise[3] * 30
    scale = rng.uniform(0.8, 1.2)
    volumes = {name: make_volume(np.where(brain, values * scale, 0.0), spacing)
               for name, values in zip(("t1c", "t2", "flair", "adc"), (t1c, t2, flair, adc), strict=True)}
    label = sitk.Cast(make_volume(tumour.astype(np.uint8), spacing), sitk.sitkUInt8)
    spots = np.argwhere(tumour & (radius < 6))
    chosen = spots[rng.choice(len(spots), size=4, replace=False)]
    biopsies = []
    for number, (kk, jj, ii) in enumerate(chosen, start=1):
        ras = voxel_to_ras(volumes["t1c"], (int(ii), int(jj), int(kk)))
        biopsies.append(Biopsy(patient_id=f"P{seed:02d}", biopsy_id=f"B{number:02d}", ras=ras,
                               ki67=float(truth[kk, jj, ii] + rng.normal(0, 1)),
                               covariates={"sex": "MF"[seed % 2], "age": 50.0 + seed, "tumor_type": "primary",
                                           "institution": f"I{seed % 2}"}))
    return {"volumes": volumes, "truth": truth, "label": label, "biopsies": biopsies}


@pytest.fixture(scope="session")
def tiny_cohort_rows():
    """Cohort-table rows of 6 synthetic patients (pyradiomics extraction at 4 biopsies each)."""
    from KiMapLib.features.extraction import extract_biopsies
    from KiMapLib.inputs.case import prepare_case
    from KiMapLib.settings import ExtractionSettings

    rows = []
    settings = ExtractionSettings(ball_radius_mm=3.0)
    for seed in range(6):
        patient = synthetic_patient(seed)
        case = prepare_case(patient["volumes"], settings)
        patient_rows, errors = extract_biopsies(case, patient["biopsies"])
        assert not errors
        rows += patient_rows
    return rows


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_cohort_rows):
    from KiMapLib.model.bundle import save_bundle
    from KiMapLib.model.training import TrainingConfig, train
    from KiMapLib.settings import ExtractionSettings

    result = train(tiny_cohort_rows, TrainingConfig(k_features=8, estimator="ridge"),
                   settings=ExtractionSettings(ball_radius_mm=3.0), model_id="test-tiny")
    return save_bundle(result.pipeline, result.card, spread=result.spread,
                       out_dir=tmp_path_factory.mktemp("models") / "tiny")


def write_case_folder(folder, patient: dict, extra_biopsies=()):
    """A patient folder as the CLI reads it: <sequence>.nrrd, label.nrrd and biopsies.csv (plus ``extra_biopsies``)."""
    from KiMapLib.inputs.biopsies import write_biopsies_csv

    for name, image in patient["volumes"].items():
        sitk.WriteImage(image, str(folder / f"{name}.nrrd"))
    sitk.WriteImage(patient["label"], str(folder / "label.nrrd"))
    write_biopsies_csv([*patient["biopsies"], *extra_biopsies], folder / "biopsies.csv")
    return folder
