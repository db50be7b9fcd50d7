"""Biology of the synthetic phantom: anatomy, tumour zones, cell density, proliferation and ki67 truth.

Every field is a function of physical position (LPS mm). It is evaluated on an axis-aligned 1 mm
"anatomy lattice" that covers the brain, and each simulated acquisition samples the lattice at its own
voxel centres (see :mod:`KiMapLib.phantom.scanner`), so spacing and orientation change the sampling but
not the anatomy. The equations are written out in ``docs/phantom.md``. SYNTHETIC: no clinical validity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Spacing (mm) of the anatomy lattice on which the continuous fields are evaluated.
LATTICE_MM = 1.0
#: Brain semi-axes (mm, LPS x/y/z) before per-patient scaling; the brain fits any acquisition FOV.
BRAIN_SEMI_AXES = np.array([50.0, 54.0, 39.0])
#: Viable tumour cells occupy at most this volume fraction of tissue (the rest is interstitial water).
MAX_CELL_VOLUME = 0.75


@dataclass
class TumourParameters:
    """Per-patient biological parameters (drawn from the patient's generator; recorded in cohort.json)."""

    centre: np.ndarray  # LPS mm
    radius_mm: float  # mean radius of the enhancing tumour
    necrosis_fraction: float  # radius of the necrotic core relative to the tumour radius
    infiltration_mm: float  # PI-model invasion length sqrt(D / rho) in white matter
    edema_mm: float  # extent of vasogenic edema beyond the enhancing edge
    edema_water: float  # extracellular water fraction of edema next to the tumour
    growth_fraction: float  # patient mean ki67 growth fraction pi_p of tumour cells
    cell_density: float  # mean relative cell density of the enhancing tumour

    def to_dict(self) -> dict[str, object]:
        return {
            "centre_lps_mm": [round(float(v), 3) for v in self.centre],
            "radius_mm": round(self.radius_mm, 3),
            "necrosis_fraction": round(self.necrosis_fraction, 3),
            "infiltration_mm": round(self.infiltration_mm, 3),
            "edema_mm": round(self.edema_mm, 3),
            "edema_water": round(self.edema_water, 3),
            "growth_fraction": round(self.growth_fraction, 4),
            "cell_density": round(self.cell_density, 3),
        }


@dataclass
class Anatomy:
    """Tissue fields on the anatomy lattice, arrays indexed [x, y, z] (LPS axes, ``LATTICE_MM`` spacing)."""

    origin: np.ndarray  # LPS mm of lattice index (0, 0, 0)
    brain_centre: np.ndarray
    depth: np.ndarray  # mm below the brain surface (negative outside the brain)
    wm: np.ndarray  # normal-tissue fractions (sum to 1)
    gm: np.ndarray
    csf: np.ndarray
    necrosis: np.ndarray  # n: necrotic volume fraction
    bulk: np.ndarray  # b: inside the enhancing tumour (soft indicator)
    density: np.ndarray  # c: tumour cell density relative to carrying capacity (viable tissue)
    water: np.ndarray  # e: vasogenic-edema water fraction outside the bulk tumour
    leak: np.ndarray  # K: contrast leakage (blood-brain barrier breakdown, angiogenesis)
    speckle: np.ndarray  # microvascular speckle: amplitude * unit fine-scale noise
    growth: np.ndarray  # pi: ki67 growth fraction of tumour cells
    ki67: np.ndarray  # % (0 outside tumour)
    label: np.ndarray  # uint8: 1 necrotic, 2 enhancing, 3 non-enhancing/edema, 0 elsewhere
    matrix: np.ndarray  # hidden extracellular-matrix / tortuosity field (unit sd): scales interstitial ADC
    tumour: TumourParameters
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.depth.shape


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_mm: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length ``sigma_mm`` (float32).

    Large scales are drawn on a coarse lattice and interpolated (fast); the result depends only on the
    generator state and the lattice shape.
    """
    from scipy import ndimage  # imported on use: the other kimap commands never need it

    step = max(1, int(sigma_mm / 1.5))
    coarse_shape = tuple(int(np.ceil(s / step)) + 2 for s in shape) if step > 1 else tuple(shape)
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    smooth = ndimage.gaussian_filter(noise, sigma_mm / (LATTICE_MM * step), mode="wrap")
    if step > 1:
        for axis, size in enumerate(shape):  # separable linear interpolation, one axis at a time
            position = np.arange(size, dtype=np.float32) / step
            low = position.astype(int)
            weight = (position - low).reshape([-1 if d == axis else 1 for d in range(3)])
            smooth = np.take(smooth, low, axis=axis) * (1 - weight) + np.take(smooth, low + 1, axis=axis) * weight
    smooth = smooth.astype(np.float32, copy=False)
    smooth -= smooth.mean()
    smooth /= max(float(smooth.std()), 1e-6)
    return smooth


def _ellipsoid_radius(points: tuple[np.ndarray, ...], centre: np.ndarray, axes: np.ndarray) -> np.ndarray:
    x, y, z = (points[i] - centre[i] for i in range(3))
    return np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)


def _radial_modulation(rng: np.random.Generator, n_terms: int, amplitude: float):
    """A low-frequency random function of direction u: sum_j a_j cos(f_j pi (v_j . u) + phi_j)."""
    directions = rng.standard_normal((n_terms, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    amplitudes = rng.uniform(0.3, 1.0, n_terms)
    amplitudes *= amplitude / amplitudes.sum()
    frequencies = rng.uniform(0.5, 1.6, n_terms)
    phases = rng.uniform(0, 2 * np.pi, n_terms)

    def modulation(ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> np.ndarray:
        total = np.zeros(np.broadcast_shapes(ux.shape, uy.shape, uz.shape), dtype=np.float32)
        for v, a, f, p in zip(directions, amplitudes, frequencies, phases, strict=True):
            total += (a * np.cos(f * np.pi * (v[0] * ux + v[1] * uy + v[2] * uz) + p)).astype(np.float32)
        return total

    return modulation


def draw_tumour(rng: np.random.Generator, brain_axes: np.ndarray, brain_centre: np.ndarray,
                recurrent: bool, age: float | None) -> TumourParameters:
    """Draw the tumour's size, position and biological parameters (covariate effects documented)."""
    radius = float(rng.uniform(15.0, 28.0))
    necrosis = float(rng.uniform(0.30, 0.60) + (0.08 if recurrent else 0.0))
    infiltration = float(rng.uniform(3.0, 7.0))
    edema = float(rng.uniform(8.0, 16.0))
    water = float(rng.uniform(0.40, 0.60))
    # Patient-level growth fraction: log-normal around 0.33; small documented covariate effects
    # (design choices, not literature values): recurrent tumours x0.85, +0.3 % per year of age over 60.
    growth = 0.33 * float(np.exp(rng.normal(0.0, 0.25)))
    if recurrent:
        growth *= 0.85
    if age is not None:
        growth *= 1.0 + 0.003 * (age - 60.0)
    density = float(rng.uniform(0.72, 0.88))
    # Centre: inside the brain, deep enough for tumour + a rim of edema, not across the midline plane.
    margin = radius * 1.25 + 6.0
    for _ in range(200):
        offset = rng.uniform(-1.0, 1.0, 3) * (brain_axes - margin).clip(min=1.0)
        if abs(offset[0]) < 8.0:
            offset[0] = np.copysign(8.0, offset[0] if offset[0] != 0 else 1.0)
        inside = np.sqrt(np.sum((offset / (brain_axes - margin).clip(min=1.0)) ** 2))
        if inside <= 1.0:
            break
    else:  # pragma: no cover - 200 rejections are practically impossible
        offset = np.zeros(3)
    return TumourParameters(brain_centre + offset, radius, min(necrosis, 0.7), infiltration, edema, water,
                            growth, density)


def build_anatomy(rng: np.random.Generator, *, recurrent: bool = False, age: float | None = None) -> Anatomy:
    """Draw one patient's anatomy and tumour and evaluate every tissue field on the anatomy lattice."""
    scale = rng.uniform(0.95, 1.03)
    axes = BRAIN_SEMI_AXES * scale
    brain_centre = rng.uniform(-4.0, 4.0, 3)
    shape = tuple(int(np.ceil(2 * (a + 3.0) / LATTICE_MM)) for a in axes)
    origin = brain_centre - (np.array(shape) - 1) * LATTICE_MM / 2.0
    points = tuple(
        (origin[i] + LATTICE_MM * np.arange(shape[i], dtype=np.float32)).reshape(
            [-1 if d == i else 1 for d in range(3)])
        for i in range(3)
    )
    tumour = draw_tumour(rng, axes, brain_centre, recurrent, age)

    # --- normal anatomy: ellipsoid brain with a gyral cortical ribbon, surface CSF, ventricles, deep GM
    rho = _ellipsoid_radius(points, brain_centre, axes).astype(np.float32)
    rho *= 1.0 + 0.025 * smooth_field(rng, shape, 8.0)
    radial = np.sqrt(sum((points[i] - brain_centre[i]) ** 2 for i in range(3))).astype(np.float32)
    depth = (1.0 - rho) * radial / np.maximum(rho, 1e-3)
    thickness = 3.0 + 1.2 * smooth_field(rng, shape, 3.0)
    csf = sigmoid((1.2 - depth) / 0.4)
    ribbon = sigmoid((1.2 + thickness - depth) / 0.5)
    ventricle = np.zeros(shape, dtype=np.float32)
    deep_gm = np.zeros(shape, dtype=np.float32)
    for side in (-1.0, 1.0):
        v = _ellipsoid_radius(points, brain_centre + np.array([7.0 * side, -2.0, 6.0]), np.array([5.0, 17.0, 7.0]))
        ventricle = np.maximum(ventricle, sigmoid((1.0 - v) * 6.0 / 0.5))
        g = _ellipsoid_radius(points, brain_centre + np.array([17.0 * side, 2.0, -2.0]), np.array([8.0, 13.0, 9.0]))
        deep_gm = np.maximum(deep_gm, sigmoid((1.0 - g) * 8.0 / 0.6))
    csf = np.maximum(csf, ventricle)
    gm = (1.0 - csf) * np.maximum(ribbon, deep_gm)
    wm = 1.0 - csf - gm

    # --- tumour geometry: irregular sphere (low-frequency radial modulation + 3D noise)
    rel = tuple(points[i] - tumour.centre[i] for i in range(3))
    dist = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2).astype(np.float32)
    unit = tuple(r / np.maximum(dist, 1e-3) for r in rel)
    radius = tumour.radius_mm * (1.0 + _radial_modulation(rng, 6, 0.28)(*unit))
    d_out = dist - radius + 2.0 * smooth_field(rng, shape, 4.0)  # mm outside the enhancing edge
    necrotic_radius = tumour.necrosis_fraction * radius
    d_nec = dist - necrotic_radius + 1.5 * smooth_field(rng, shape, 3.0)  # mm outside the necrotic core
    necrosis = sigmoid(-d_nec / 0.7)
    bulk = sigmoid(-d_out / 0.7)

    # --- cell density c: heterogeneous plateau in the bulk, proliferation-invasion tail outside.
    plateau = tumour.cell_density + 0.08 * smooth_field(rng, shape, 4.0) + 0.05 * smooth_field(rng, shape, 1.2)
    plateau += 0.10 * np.exp(-np.abs(d_nec) / 2.0)  # hypercellular pseudopalisading next to necrosis
    plateau = np.clip(plateau, 0.35, 1.0)
    invasion = tumour.infiltration_mm * (0.45 + 0.55 * wm)  # faster invasion along white matter
    # exponential PI-like tail, cut to exactly 0 where it falls below 5 % of the plateau
    tail = np.maximum(np.exp(-np.maximum(d_out, 0.0) / invasion) - 0.05, 0.0) / 0.95
    density = plateau * (bulk + (1.0 - bulk) * tail)

    # --- vasogenic edema: extracellular water outside the bulk, spreading in white matter, sparing cortex
    edema_shape = 1.0 + 0.3 * smooth_field(rng, shape, 6.0)
    front = sigmoid((tumour.edema_mm * edema_shape - d_out) / 1.5)  # edema plateau ending at a soft front
    water = tumour.edema_water * front * (0.25 + 0.75 * wm)
    water = np.clip(water * (1.0 - bulk), 0.0, 0.7) * (1.0 - csf)

    # --- proliferation: log growth fraction = patient level + visible part + hidden part
    visible = 0.75 * smooth_field(rng, shape, 5.0) + 0.45 * smooth_field(rng, shape, 2.0)
    visible *= 0.30 / float(np.sqrt(0.75**2 + 0.45**2))  # sd 0.30: shows in enhancement and texture
    hidden = 0.6 * smooth_field(rng, shape, 3.0) + 0.8 * smooth_field(rng, shape, 9.0)
    hidden *= 0.25  # sd 0.25: biology the MRI does not show
    log_visible = np.log(tumour.growth_fraction / 0.33) + visible
    growth = np.clip(tumour.growth_fraction * np.exp(visible + hidden - 0.5 * (0.30**2 + 0.25**2)), 0.01, 0.9)
    viable = 1.0 - necrosis
    ki67 = 100.0 * growth * density * viable

    # --- angiogenesis: leaky neovessels in the bulk, more (and more heterogeneous) where proliferation is high
    leak = bulk * viable * np.clip(0.55 * np.exp(0.9 * log_visible), 0.05, 1.3)
    amplitude = np.clip(0.35 * np.exp(0.9 * log_visible), 0.0, 0.9)
    speckle = amplitude * smooth_field(rng, shape, 0.7)
    matrix = smooth_field(rng, shape, 4.0)

    inside = depth > 0
    label = np.zeros(shape, dtype=np.uint8)
    abnormal = (density >= 0.12) | (water >= 0.15)  # T2/FLAIR-visible abnormality
    label[inside & abnormal] = 3
    label[inside & (bulk > 0.5)] = 2
    label[inside & (necrosis > 0.75)] = 1
    ki67 = np.where(inside, ki67, 0.0)

    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return Anatomy(
        origin=origin, brain_centre=brain_centre, depth=f32(depth), wm=f32(wm), gm=f32(gm), csf=f32(csf),
        necrosis=f32(necrosis), bulk=f32(bulk), density=f32(density), water=f32(water), leak=f32(leak),
        speckle=f32(speckle), growth=f32(growth), ki67=f32(ki67), label=label, matrix=matrix, tumour=tumour,
        extra={"brain_scale": float(scale)},
    )
