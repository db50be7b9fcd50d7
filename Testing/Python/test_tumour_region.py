"""The tumour region: the automatic segmentation on real MRI, its refusal on normal anatomy, necrosis kept out of the
map, labels on the exact t1c grid, the QC outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_volume, rotation, synthetic_patient

from KiMapLib.app.cli import main
from KiMapLib.errors import KiMapError
from KiMapLib.inputs.case import prepare_case
from KiMapLib.inputs.geometry import from_lps, lps_axes, same_grid, to_lps
from KiMapLib.maps.mapping import compute_map
from KiMapLib.model.bundle import load_model
from KiMapLib.region.tumour_region import (
    NECROSIS_REASON,
    TumourRegion,
    given_region,
    propose_region,
    require_plausible,
)

TCGA = Path(__file__).resolve().parents[3] / "shared" / "data" / "tcga-du-7294"
needs_tcga = pytest.mark.skipif(not (TCGA / "t1c.nii.gz").is_file(), reason="../shared/data/tcga-du-7294 not present")
SEQUENCES = ("t1", "t1c", "t2", "flair")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def tcga() -> dict[str, sitk.Image]:
    if not (TCGA / "t1c.nii.gz").is_file():
        pytest.skip("../shared/data/tcga-du-7294 not present")
    return {name: sitk.ReadImage(str(TCGA / f"{name}.nii.gz"), sitk.sitkFloat32) for name in SEQUENCES}


@pytest.fixture(scope="module")
def tcga_reference() -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(TCGA / "tumor_seg_fusion_mav.nii.gz"))) > 0


@pytest.fixture(scope="module")
def tcga_region(tcga) -> TumourRegion:
    return propose_region(prepare_case(dict(tcga)))


@pytest.mark.parametrize("permutation", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
@pytest.mark.parametrize("signs", [(1, 1, 1), (-1, 1, -1), (1, -1, -1)])
def test_lps_axis_order_is_an_exact_round_trip(permutation, signs):
    direction = np.zeros((3, 3))
    for column, (row, sign) in enumerate(zip(permutation, signs, strict=True)):
        direction[row, column] = sign
    array = np.random.default_rng(1).random((5, 6, 7))
    image = make_volume(array, spacing=(0.7, 1.1, 2.5), direction=direction.flatten())
    order, flips, spacing = lps_axes(image)
    lps = to_lps(array, order, flips)
    back = from_lps(lps, order, flips)
    np.testing.assert_array_equal(back, array)
    # in the LPS array, axis 2 runs along +x (towards the patient's left), axis 1 along +y, axis 0 along +z
    k, j, i = np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij")
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(float)
    physical = np.array([image.TransformContinuousIndexToPhysicalPoint(p) for p in index]).reshape(*array.shape, 3)
    for axis, coordinate in ((2, 0), (1, 1), (0, 2)):
        steps = np.diff(to_lps(physical[..., coordinate], order, flips), axis=axis)
        np.testing.assert_allclose(steps, spacing[coordinate], atol=1e-9)


@needs_tcga
def test_tcga_whole_tumour_dice_against_both_reference_segmentations(tcga_region, tcga_reference):
    whole = tcga_region.labels > 0
    assert dice(whole, tcga_reference) >= 0.80
    isen = sitk.GetArrayFromImage(sitk.ReadImage(str(TCGA / "tumor_seg_isen20.nii.gz"))) > 0
    assert dice(whole, isen) >= 0.80
    # a low-grade glioma: no enhancement and no necrosis (vessels must not become "enhancing tumour")
    assert (tcga_region.labels == 3).sum() < 0.05 * whole.sum()
    assert (tcga_region.labels == 1).sum() < 0.05 * whole.sum()
    assert not tcga_region.problems


@needs_tcga
def test_the_region_uses_every_given_sequence_also_those_the_model_does_not(tcga, tcga_reference):
    model = load_model()  # the packaged model needs t1c, t2 and flair; TCGA also gives t1
    assert model.required_sequences == ("t1c", "t2", "flair")
    case = prepare_case(dict(tcga), model.settings, required=model.required_sequences)
    assert set(case.images) == set(SEQUENCES)  # nothing the user gave was dropped
    result = compute_map(case, model)
    use = result.summary["sequence_use"]
    assert set(use["model"]) == {"t1c", "t2", "flair"} and {"t1", "flair", "t2"} <= set(use["tumour_region"])
    mapped = np.isfinite(sitk.GetArrayFromImage(result.ki67))
    assert dice(mapped, tcga_reference) >= 0.80
    labels = sitk.GetArrayFromImage(result.labels)
    assert same_grid(result.labels, tcga["t1c"], tolerance=0) and labels.max() <= 3


@needs_tcga
def test_t1c_alone_is_refused_unless_asked_for(tcga):
    region = propose_region(prepare_case({"t1c": tcga["t1c"]}))
    with pytest.raises(KiMapError, match="only t1c") as refused:
        require_plausible(region)
    assert "--region" in str(refused.value) and "FLAIR" in str(refused.value)
    # asked for explicitly: the t1c-only problem is dropped; any other problem still refuses
    others = [p for p in region.problems if not p.startswith("only t1c")]
    if others:
        with pytest.raises(KiMapError) as still:
            require_plausible(region, allow_t1c_only=True)
        assert "only t1c" not in str(still.value) and others[0] in str(still.value)
    else:
        require_plausible(region, allow_t1c_only=True)


@needs_tcga
def test_a_symmetric_brain_without_tumour_is_refused_not_mapped(tcga, tmp_path):
    """The healthy (left) hemisphere mirrored onto the tumour's side, plus symmetric bright structures (like choroid
    plexus or sinuses, bright on t1c and FLAIR): nothing may be mapped."""
    volumes = {}
    case = prepare_case(dict(tcga))
    order, flips, _ = lps_axes(case.reference)
    for name, image in tcga.items():
        lps = to_lps(sitk.GetArrayFromImage(image), order, flips)
        middle = lps.shape[2] // 2
        lps[..., :middle] = lps[..., ::-1][..., :middle]  # right half := mirrored left half
        z, y, x = np.ogrid[: lps.shape[0], : lps.shape[1], : lps.shape[2]]
        for side in (-1, 1):
            blob = (z - 80) ** 2 + (y - 140) ** 2 + (x - (middle + side * 18)) ** 2 < 36
            if name in ("t1c", "flair"):
                lps[blob & (lps > 0)] *= 2.5
        back = np.transpose(np.flip(lps, flips), np.argsort(order))
        mirrored = sitk.GetImageFromArray(np.ascontiguousarray(back))
        mirrored.CopyInformation(image)
        volumes[name] = mirrored
    model = load_model()
    symmetric = prepare_case(volumes, model.settings, required=model.required_sequences)
    with pytest.raises(KiMapError, match="not plausible") as refused:
        compute_map(symmetric, model)
    # refused for what it is: nothing asymmetric found, or the symmetric blobs recognised as normal anatomy
    assert any(reason in str(refused.value) for reason in ("no lesion found", "symmetric", "asymmetric"))
    paths = []
    for name, image in volumes.items():
        paths += ["--volume", f"{name}={tmp_path / name}.nrrd"]
        sitk.WriteImage(image, str(tmp_path / f"{name}.nrrd"))
    assert main(["map", *paths, "--out", str(tmp_path / "map")]) == 2
    assert not (tmp_path / "map").exists()


def test_necrosis_is_excluded_from_the_map(tiny_model_dir):
    model = load_model(tiny_model_dir)
    patient = synthetic_patient(21)
    case = prepare_case(patient["volumes"], model.settings, required=model.required_sequences)
    tumour = sitk.GetArrayFromImage(patient["label"]).astype(bool)
    labels = np.where(tumour, 2, 0).astype(np.uint8)
    core = tumour & (sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(patient["label"], squaredDistance=False,
                                                                         useImageSpacing=True)) < -4)
    labels[core] = 1
    assert core.sum() > 20
    region = TumourRegion(labels=labels, source="automatic", excluded_labels=(1,))
    result = compute_map(case, model, region)
    ki67 = sitk.GetArrayFromImage(result.ki67)
    assert np.isnan(ki67[core]).all()
    assert np.isfinite(ki67[tumour & ~core]).mean() > 0.9
    summary = result.summary["tumour_region"]
    assert summary["excluded"] == {"necrotic core": int(core.sum())}
    assert summary["excluded_reason"] == NECROSIS_REASON
    # a given label map: every label is mapped unless the user excludes it
    label_image = make_volume(labels, spacing=patient["label"].GetSpacing(),
                              direction=np.array(patient["label"].GetDirection()),
                              origin=patient["label"].GetOrigin())
    assert given_region(label_image, case.reference).mapped.sum() == tumour.sum()
    assert given_region(label_image, case.reference, exclude_labels=(1,)).mapped.sum() == (tumour & ~core).sum()


@needs_tcga
def test_labels_lie_on_the_exact_t1c_grid_of_an_oblique_anisotropic_volume(tcga, tcga_reference):
    """TCGA resampled onto a grid rotated 12 degrees about two axes, with 0.9 x 1.2 x 2.0 mm voxels."""
    source = tcga["t1c"]
    direction = rotation(12.0, 8.0)
    spacing = (0.9, 1.2, 2.0)
    size = [int(n * s / t) for n, s, t in zip(source.GetSize(), source.GetSpacing(), spacing, strict=True)]
    centre = np.array(source.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in source.GetSize()]))
    origin = centre - direction.reshape(3, 3) @ (np.array(size) - 1) / 2 * np.array(spacing)
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(tuple(direction.flatten()))
    grid.SetOrigin(tuple(origin))
    oblique = {name: sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0) for name, image in tcga.items()}
    reference_image = sitk.GetImageFromArray(tcga_reference.astype(np.uint8))
    reference_image.CopyInformation(source)
    reference = sitk.GetArrayFromImage(sitk.Resample(reference_image, grid, sitk.Transform(),
                                                     sitk.sitkNearestNeighbor, 0)) > 0
    case = prepare_case(oblique)
    region = propose_region(case)
    assert region.labels.shape == sitk.GetArrayViewFromImage(oblique["t1c"]).shape
    assert same_grid(region.label_image(case.reference), oblique["t1c"], tolerance=0)
    assert dice(region.labels > 0, reference) >= 0.75


@needs_tcga
def test_segment_command_writes_labels_qc_picture_and_numbers(tmp_path):
    args = ["segment", *[a for name in SEQUENCES for a in ("--volume", f"{name}={TCGA / name}.nii.gz")]]
    assert main([*args, "--out", str(tmp_path / "seg")]) == 0
    labels = sitk.ReadImage(str(tmp_path / "seg" / "tumour_labels.nrrd"))
    assert same_grid(labels, sitk.ReadImage(str(TCGA / "t1c.nii.gz")), tolerance=0)
    png = (tmp_path / "seg" / "region_qc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    qc = json.loads((tmp_path / "seg" / "region_qc.json").read_text())
    assert qc["source"] == "automatic" and qc["problems"] == []
    assert qc["method"]["sequences"] == list(SEQUENCES)
    assert 15 < qc["mapped_volume_ml"] < 40  # the reference segmentations hold 23.7 ml
    # t1c alone: written for review, exit status 3
    assert main(["segment", "--volume", f"t1c={TCGA / 't1c.nii.gz'}", "--out", str(tmp_path / "t1c")]) == 3
    assert (tmp_path / "t1c" / "region_qc.png").is_file()
