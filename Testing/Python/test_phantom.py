"""Tests of the synthetic glioblastoma phantom (KiMapLib.phantom): determinism, geometry, biology, biopsies."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk

from KiMapLib.app.phantom_command import add_parser
from KiMapLib.errors import KiMapError
from KiMapLib.inputs.biopsies import read_biopsies_csv
from KiMapLib.inputs.geometry import nearest_voxel, same_grid
from KiMapLib.phantom import INSTITUTIONS, SYNTHETIC_NOTICE, generate_cohort, generate_patient
from KiMapLib.phantom.cohort import PHANTOM_SEQUENCES as SEQUENCES

SEEDS = (11, 12, 13, 14)


@pytest.fixture(scope="module")
def patients():
    """One patient per institution (INST-A..D)."""
    return [generate_patient(f"T{i}", np.random.default_rng(seed), site)
            for i, (seed, site) in enumerate(zip(SEEDS, INSTITUTIONS, strict=True))]


def arrays(patient):
    images = {s: sitk.GetArrayFromImage(patient.images[s]).astype(float) for s in SEQUENCES}
    return (images, sitk.GetArrayFromImage(patient.label), sitk.GetArrayFromImage(patient.ki67_truth),
            sitk.GetArrayFromImage(patient.cell_density))


def test_same_seed_same_patient(patients):
    again = generate_patient("T2", np.random.default_rng(SEEDS[2]), INSTITUTIONS[2])
    first, second = arrays(patients[2]), arrays(again)
    for sequence in SEQUENCES:
        np.testing.assert_array_equal(first[0][sequence], second[0][sequence])
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[2], second[2])
    assert [b.row() for b in patients[2].biopsies] == [b.row() for b in again.biopsies]


def test_grids_shared_within_patient_and_varied_across_institutions(patients):
    spacings, directions = [], []
    for patient in patients:
        reference = patient.images["t1c"]
        for image in (*patient.images.values(), patient.label, patient.ki67_truth):
            assert same_grid(reference, image)
        assert patient.label.GetPixelID() == sitk.sitkUInt8
        assert patient.ki67_truth.GetPixelID() == sitk.sitkFloat32
        assert np.prod(reference.GetSize()) <= 1_500_000
        spacings.append(np.array(reference.GetSpacing()))
        directions.append(np.array(reference.GetDirection()).reshape(3, 3))
        assert patient.institution == patient.covariates["institution"]
    assert any(np.ptp(s) > 0.3 for s in spacings), "an anisotropic grid is expected"
    assert len({tuple(np.round(s, 3)) for s in spacings}) == len(patients)
    angles = [np.degrees(np.arccos(np.clip(abs(d[2, 2]), -1, 1))) for d in directions]
    assert max(angles) > 8.0, "an oblique grid is expected"
    assert any(d[0, 0] < 0 for d in directions), "a grid stored with flipped axes is expected"
    for d in directions:
        np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)


def test_background_is_zero_and_brain_is_foreground(patients):
    for patient in patients:
        images, label, truth, _ = arrays(patient)
        brain = images["t1c"] > 0
        assert 0.2 < brain.mean() < 0.8
        for sequence in SEQUENCES:
            assert np.array_equal(images[sequence] > 0, brain), sequence
        assert not label[~brain].any()
        assert not truth[~brain].any()
        assert set(np.unique(label)) == {0, 1, 2, 3}


def test_biology_matches_literature_relations(patients):
    for patient in patients:
        images, label, truth, density = arrays(patient)
        brain = images["t1c"] > 0
        rim, edema, necrosis, normal = label == 2, label == 3, label == 1, brain & (label == 0)
        dense_rim = rim & (density >= np.median(density[rim]))
        # ADC falls with cellularity (Chang 2017): dense enhancing tumour below edema
        assert images["adc"][dense_rim].mean() < images["adc"][edema].mean() - 50
        # enhancement where the blood-brain barrier is broken
        assert images["t1c"][rim].mean() > 1.2 * images["t1c"][edema].mean()
        # T2 / FLAIR bright in edema and necrosis dark on t1c, bright on t2
        assert images["flair"][edema].mean() > 1.2 * images["flair"][normal].mean()
        assert images["t2"][edema].mean() > images["t2"][normal].mean()
        assert images["t1c"][necrosis].mean() < images["t1c"][normal].mean()
        assert images["t2"][necrosis].mean() > images["t2"][rim].mean()
        # ki67 truth: 0 in normal brain and necrosis, GBM range in the enhancing rim
        assert np.median(truth[normal]) == 0.0 and truth[normal].mean() < 1.0
        assert np.median(truth[necrosis]) < 1.0
        assert 10.0 < truth[rim].mean() < 45.0
        assert truth[edema].mean() < truth[rim].mean()
        assert truth.max() <= 90.0
        # more cells, lower ADC; more proliferation, more enhancement (inside the rim)
        assert np.corrcoef(density[rim], images["adc"][rim])[0, 1] < -0.2
        assert np.corrcoef(truth[rim], images["t1c"][rim])[0, 1] > 0.2


def test_biopsies_inside_tumour_apart_and_close_to_truth(patients):
    errors = []
    for patient in patients:
        _, label, truth, _ = arrays(patient)
        assert 3 <= len(patient.biopsies) <= 10
        assert [b.biopsy_id for b in patient.biopsies] == [f"B{i:02d}" for i in range(1, len(patient.biopsies) + 1)]
        points = np.array([b.ras for b in patient.biopsies])
        distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + 1e3 * np.eye(len(points))
        assert distances.min() >= 6.0
        for biopsy in patient.biopsies:
            ijk = nearest_voxel(patient.label, biopsy.ras)
            assert ijk is not None
            centre = np.array(patient.label.TransformIndexToPhysicalPoint(ijk)) * [-1, -1, 1]
            np.testing.assert_allclose(centre, biopsy.ras, atol=1e-6)  # exactly at a voxel centre (RAS)
            assert label[ijk[::-1]] in (2, 3)
            assert 0.0 <= biopsy.ki67 <= 100.0
            errors.append(biopsy.ki67 - truth[ijk[::-1]])
            assert biopsy.covariates["institution"] == patient.institution
            assert biopsy.covariates["sex"] in ("M", "F")
            assert biopsy.covariates["tumor_type"] in ("primary", "recurrent")
    errors = np.array(errors)
    assert np.abs(errors).mean() < 4.0
    assert 1.0 < errors.std() < 6.0  # measurement noise is there, but small


def test_cohort_files_are_complete_and_byte_identical_on_rerun(tmp_path):
    records = generate_cohort(tmp_path / "a", 2, seed=5)
    generate_cohort(tmp_path / "b", 2, seed=5)
    names = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    files = ("t1c.nrrd", "t2.nrrd", "flair.nrrd", "adc.nrrd", "tumor_label.nrrd", "ki67_truth.nrrd", "biopsies.csv")
    expected = {f"SYN00{i}/{f}" for i in (1, 2) for f in files}
    assert set(names) == expected | {"biopsies.csv", "cohort.json", ".kimap-manifest.json"}
    manifest = json.loads((tmp_path / "a" / ".kimap-manifest.json").read_text())
    assert manifest["kind"] == "phantom cohort" and sorted(manifest["files"]) == sorted(set(names) - {
        ".kimap-manifest.json"})
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    document = json.loads((tmp_path / "a" / "cohort.json").read_text(encoding="utf-8"))
    assert document["notice"] == SYNTHETIC_NOTICE and document["seed"] == 5
    assert [p["institution"] for p in document["patients"]] == ["INST-A", "INST-B"]
    assert document["patients"] == json.loads(json.dumps(records))
    everyone = read_biopsies_csv(tmp_path / "a" / "biopsies.csv")
    per_patient = [b for i in (1, 2) for b in read_biopsies_csv(tmp_path / "a" / f"SYN00{i}" / "biopsies.csv")]
    assert [b.row() for b in everyone] == [b.row() for b in per_patient]
    assert len(everyone) == sum(r["n_biopsies"] for r in records)
    image = sitk.ReadImage(str(tmp_path / "a" / "SYN002" / "t1c.nrrd"))
    assert image.GetPixelID() == sitk.sitkInt16
    np.testing.assert_allclose(records[1]["grid"]["spacing_mm"], image.GetSpacing(), atol=1e-6)


def test_refuses_a_folder_that_is_not_a_cohort(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(KiMapError, match=r"is not empty and has no KiMap manifest .*: keep\.txt"):
        generate_cohort(tmp_path, 1, seed=0)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(KiMapError):
        generate_cohort(tmp_path / "new", 0, seed=0)


def test_cli_parser():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["phantom", "--out", "x", "--patients", "3", "--seed", "9", "--dicom"])
    assert (args.patients, args.seed, args.dicom, str(args.out)) == (3, 9, True, "x")
    assert callable(args.func)
