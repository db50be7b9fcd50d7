"""Scanner model of the phantom: per-institution grids, orientation, intensity scale/offset, bias, noise.

An acquisition is a grid (spacing, direction, origin, size) plus per-sequence intensity transforms.
Intrinsic signals from :mod:`KiMapLib.phantom.mri` live on the anatomy lattice in physical space; they
are blurred by an approximate slice profile and resampled at the acquisition's voxel centres, then
``stored = scale * bias(x) * signal + offset`` with Rician noise (t1c, t2, flair) or
``stored = adc_scale * adc + adc_offset`` with Gaussian noise (adc, a computed map: no bias field).
SYNTHETIC: no clinical validity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from KiMapLib.phantom.fields import LATTICE_MM

#: Field of view (mm) of every acquisition along its own axes, centred on the brain.
FOV_MM = np.array([120.0, 120.0, 96.0])
WEIGHTED = ("t1c", "t2", "flair")


@dataclass(frozen=True)
class Institution:
    """A site's scanner protocol; patients get small random jitter around these values."""

    name: str
    spacing: tuple[float, float, float]
    tilt_deg: float  # oblique acquisition: rotation about the left-right axis
    flip_xy: bool  # stored with the first two axes reversed (direction diag(-1, -1, 1) @ R)
    scale: dict[str, float]  # stored intensity per unit relative signal
    offset: dict[str, float]
    noise: float  # noise sd as a fraction of the white-matter signal
    bias: float  # sd of the log bias field at the edge of the field of view
    adc_scale: float = 1.0
    adc_offset: float = 0.0
    adc_noise: float = 60.0  # 1e-6 mm^2/s

    def to_dict(self) -> dict[str, object]:
        return {
            "spacing_mm": list(self.spacing), "tilt_deg": self.tilt_deg, "flip_xy": self.flip_xy,
            "scale": dict(self.scale), "offset": dict(self.offset), "noise_fraction": self.noise,
            "bias_log_sd": self.bias, "adc_scale": self.adc_scale, "adc_offset": self.adc_offset,
            "adc_noise": self.adc_noise,
        }


INSTITUTIONS: tuple[Institution, ...] = (
    Institution("INST-A", (1.0, 1.0, 1.0), 0.0, False,
                {"t1c": 900.0, "t2": 1100.0, "flair": 800.0}, {"t1c": 0.0, "t2": 0.0, "flair": 0.0},
                noise=0.025, bias=0.08),
    Institution("INST-B", (0.9, 0.9, 1.5), 14.0, False,
                {"t1c": 2200.0, "t2": 2600.0, "flair": 1800.0}, {"t1c": 150.0, "t2": 60.0, "flair": 100.0},
                noise=0.035, bias=0.15, adc_scale=1.04, adc_offset=-20.0, adc_noise=80.0),
    Institution("INST-C", (1.2, 1.2, 2.0), 6.0, True,
                {"t1c": 350.0, "t2": 420.0, "flair": 300.0}, {"t1c": 20.0, "t2": 10.0, "flair": 15.0},
                noise=0.045, bias=0.12, adc_scale=0.96, adc_offset=30.0, adc_noise=90.0),
    Institution("INST-D", (1.0, 1.0, 1.3), -10.0, False,
                {"t1c": 1500.0, "t2": 1700.0, "flair": 1300.0}, {"t1c": 0.0, "t2": 40.0, "flair": 0.0},
                noise=0.03, bias=0.20, adc_scale=1.0, adc_offset=10.0, adc_noise=70.0),
)


def institution(name: str) -> Institution:
    for site in INSTITUTIONS:
        if site.name == name:
            return site
    raise KeyError(name)


@dataclass
class Acquisition:
    """One patient's concrete acquisition: grid and per-sequence intensity parameters."""

    institution: str
    reference: sitk.Image  # empty image carrying the grid
    scale: dict[str, float]
    offset: dict[str, float]
    noise: dict[str, float]  # sd in stored units
    bias: dict[str, np.ndarray]  # quadratic log-bias coefficients per weighted sequence
    rotation_deg: float
    extra: dict[str, float] = field(default_factory=dict)

    def grid_dict(self) -> dict[str, object]:
        ref = self.reference
        return {
            "size": list(ref.GetSize()),
            "spacing_mm": [round(v, 6) for v in ref.GetSpacing()],
            "origin_lps_mm": [round(v, 6) for v in ref.GetOrigin()],
            "direction": [round(v, 8) for v in ref.GetDirection()],
            "rotation_deg": round(self.rotation_deg, 3),
        }


def rotation_matrix(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rodrigues rotation about a unit axis."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def draw_acquisition(rng: np.random.Generator, site: Institution, brain_centre: np.ndarray) -> Acquisition:
    """The site's protocol with per-patient jitter (orientation, FOV position, intensities, noise, bias)."""
    jitter_axis = rng.standard_normal(3)
    jitter_deg = rng.uniform(0.0, 5.0)
    direction = rotation_matrix(jitter_axis, jitter_deg) @ rotation_matrix([1.0, 0.0, 0.0], site.tilt_deg)
    if site.flip_xy:
        direction = direction @ np.diag([-1.0, -1.0, 1.0])
    spacing = np.array(site.spacing)
    size = np.round(FOV_MM / spacing).astype(int)
    centre = brain_centre + rng.uniform(-3.0, 3.0, 3)
    origin = centre - direction @ (spacing * (size - 1) / 2.0)
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetSpacing(spacing.tolist())
    reference.SetDirection(direction.ravel().tolist())
    reference.SetOrigin(origin.tolist())

    scale = {s: site.scale[s] * float(np.exp(rng.normal(0.0, 0.08))) for s in WEIGHTED}
    offset = {s: site.offset[s] * float(rng.uniform(0.8, 1.2)) for s in WEIGHTED}
    noise_factor = float(rng.uniform(0.8, 1.25))
    noise = {s: site.noise * noise_factor * scale[s] for s in WEIGHTED}
    scale["adc"] = site.adc_scale * float(np.exp(rng.normal(0.0, 0.02)))
    offset["adc"] = site.adc_offset + float(rng.normal(0.0, 10.0))
    noise["adc"] = site.adc_noise * noise_factor
    common = rng.standard_normal(9)
    bias_sd = site.bias * float(rng.uniform(0.7, 1.3))
    bias = {s: bias_sd / 3.0 * (0.8 * common + 0.6 * rng.standard_normal(9)) for s in WEIGHTED}
    # total rotation angle away from the identity (flip excluded)
    unflipped = direction @ np.diag([-1.0, -1.0, 1.0]) if site.flip_xy else direction
    angle = float(np.rad2deg(np.arccos(np.clip((np.trace(unflipped) - 1) / 2, -1, 1))))
    return Acquisition(site.name, reference, scale, offset, noise, bias, angle)


def lattice_image(array_xyz: np.ndarray, origin: np.ndarray) -> sitk.Image:
    """A lattice field ([x, y, z] numpy order) as an axis-aligned LPS SimpleITK image."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    image.SetSpacing([LATTICE_MM] * 3)
    image.SetOrigin([float(v) for v in origin])
    return image


def slice_profile_sigma(reference: sitk.Image) -> np.ndarray:
    """Per-lattice-axis Gaussian sd (mm) approximating the acquisition voxel's box profile beyond the lattice's."""
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    variance = np.maximum(np.array(reference.GetSpacing()) ** 2 - LATTICE_MM**2, 0.0) / 12.0
    return np.sqrt((direction**2) @ variance)


def sample(array_xyz: np.ndarray, origin: np.ndarray, reference: sitk.Image, *, nearest: bool = False,
           blur: np.ndarray | None = None) -> np.ndarray:
    """Sample a lattice field at the reference grid's voxel centres; returns a [k, j, i] array."""
    from scipy import ndimage  # imported on use: the other kimap commands never need it

    if blur is not None and np.any(blur > 0.1):
        array_xyz = ndimage.gaussian_filter(array_xyz, blur / LATTICE_MM, mode="nearest", truncate=3.0)
    image = lattice_image(array_xyz, origin)
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    resampled = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, image.GetPixelID())
    return sitk.GetArrayFromImage(resampled)


def lattice_points(shape: tuple[int, ...], origin: np.ndarray) -> tuple[np.ndarray, ...]:
    """LPS coordinates of the lattice points as three open (broadcastable) float32 arrays."""
    return tuple(
        (origin[a] + LATTICE_MM * np.arange(size, dtype=np.float32)).reshape([-1 if d == a else 1 for d in range(3)])
        for a, size in enumerate(shape)
    )


def bias_field(coefficients: np.ndarray, points: tuple[np.ndarray, ...], centre: np.ndarray) -> np.ndarray:
    """Smooth multiplicative bias exp(quadratic polynomial of position / 60 mm)."""
    x, y, z = ((points[a] - centre[a]) / 60.0 for a in range(3))
    terms = (x, y, z, x * x - 0.33, y * y - 0.33, z * z - 0.33, x * y, x * z, y * z)
    log_bias = sum(float(c) * t for c, t in zip(coefficients, terms, strict=True))
    return np.exp(log_bias).astype(np.float32)


def acquire(rng: np.random.Generator, acquisition: Acquisition, signals: dict[str, np.ndarray],
            origin: np.ndarray, brain: np.ndarray, brain_centre: np.ndarray) -> dict[str, sitk.Image]:
    """Scanner images (int16, LPS) of every sequence; 0 outside ``brain`` (skull-stripped)."""
    reference = acquisition.reference
    blur = slice_profile_sigma(reference)
    images = {}
    for sequence, signal in signals.items():
        if sequence != "adc":  # the bias is a smooth function of position: apply it in physical space
            signal = signal * bias_field(acquisition.bias[sequence], lattice_points(signal.shape, origin), brain_centre)
        value = sample(signal, origin, reference, blur=blur)
        sd = acquisition.noise[sequence]
        if sequence == "adc":
            value = acquisition.scale["adc"] * value + acquisition.offset["adc"]
            value = value + sd * rng.standard_normal(value.shape, dtype=np.float32)
        else:
            value = acquisition.scale[sequence] * value
            real = value + sd * rng.standard_normal(value.shape, dtype=np.float32)
            imaginary = sd * rng.standard_normal(value.shape, dtype=np.float32)
            value = np.sqrt(real * real + imaginary * imaginary) + acquisition.offset[sequence]
        value = np.where(brain, np.clip(np.rint(value), 1, 32767), 0).astype(np.int16)
        image = sitk.GetImageFromArray(value)
        image.CopyInformation(reference)
        images[sequence] = image
    return images
