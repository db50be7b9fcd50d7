"""Validation of pyradiomics-style settings for the feature-map engine."""

from __future__ import annotations

from dataclasses import dataclass

from KiMapLib.errors import KiMapError

#: Settings that do not change voxel-wise features here (bookkeeping, checks, or no-ops without resampling).
IGNORED = {"additionalInfo", "minimumROIDimensions", "minimumROISize", "correctMask", "geometryTolerance", "preCrop",
           "padDistance", "initValue", "voxelBatch", "interpolator", "force2Ddimension", "label_channel",
           "enableCExtensions", "resegmentShape", "resegmentMode", "voxelBased"}
USED = {"binWidth", "binCount", "kernelRadius", "maskedKernel", "normalize", "normalizeScale", "removeOutliers",
        "voxelArrayShift", "distances", "symmetricalGLCM", "weightingNorm", "gldm_a", "label", "ballRadius",
        "resampledPixelSpacing", "force2D", "resegmentRange"}
WEIGHTINGS = (None, "manhattan", "euclidean", "infinity", "no_weighting")


@dataclass(frozen=True)
class Params:
    bin_width: float | int
    bin_count: int | None
    kernel_radius: int
    masked: bool
    normalize: bool
    normalize_scale: float
    remove_outliers: float | None
    voxel_shift: float
    distances: tuple[int, ...]
    symmetric: bool
    weighting: str | None
    gldm_a: int
    label: int
    ball_radius: float


def _bad(name: str, message: str, hint: str) -> KiMapError:
    return KiMapError(message, input_name=f"settings['{name}']", hint=hint)


def parse(settings: dict | None, kernel: str) -> Params:
    """Check ``settings`` (pyradiomics names) and return the values the engine uses; raise on unsupported ones."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - IGNORED - USED)
    if unknown:
        raise KiMapError(f"unsupported setting(s) {', '.join(unknown)}", input_name="settings",
                         hint="use pyradiomics setting names (binWidth, kernelRadius, distances, ...)")
    if settings.get("resampledPixelSpacing") is not None:
        raise _bad("resampledPixelSpacing", "resampling is not done by the map engine",
                   "resample the image beforehand and pass resampledPixelSpacing=None")
    if settings.get("force2D", False):
        raise _bad("force2D", "2D extraction is not supported", "use force2D=False")
    if settings.get("resegmentRange") is not None:
        raise _bad("resegmentRange", "resegmentation is not supported", "resegment the mask beforehand")
    bin_count = settings.get("binCount")
    bin_width = settings.get("binWidth", 25)
    if bin_count is not None and (int(bin_count) != bin_count or bin_count < 1):
        raise _bad("binCount", f"must be a positive integer, got {bin_count!r}", "e.g. binCount=32")
    if bin_count is None and not (isinstance(bin_width, int | float) and bin_width > 0):
        raise _bad("binWidth", f"must be a positive number, got {bin_width!r}", "e.g. binWidth=25")
    radius = settings.get("kernelRadius", 1)
    if kernel == "cube" and (int(radius) != radius or radius < 1):
        raise _bad("kernelRadius", f"must be an integer >= 1, got {radius!r}", "e.g. kernelRadius=2")
    distances = settings.get("distances", [1])
    try:
        distances = tuple(int(d) for d in distances)
    except (TypeError, ValueError):
        raise _bad("distances", f"must be a list of integers, got {distances!r}", "e.g. distances=[1]") from None
    if not distances or min(distances) < 1:
        raise _bad("distances", f"must be positive integers, got {list(distances)}", "e.g. distances=[1]")
    weighting = settings.get("weightingNorm")
    if weighting not in WEIGHTINGS:
        raise _bad("weightingNorm", f"unknown value {weighting!r}",
                   "use None, 'manhattan', 'euclidean', 'infinity' or 'no_weighting'")
    alpha = settings.get("gldm_a", 0)
    if int(alpha) != alpha or alpha < 0:
        raise _bad("gldm_a", f"must be an integer >= 0, got {alpha!r}", "e.g. gldm_a=0")
    ball = settings.get("ballRadius", 5.0)
    if kernel == "ball" and not (isinstance(ball, int | float) and ball > 0):
        raise _bad("ballRadius", f"must be a positive radius in mm, got {ball!r}", "e.g. ballRadius=5.0")
    if kernel == "ball" and bin_count is not None:
        raise _bad("binCount", "per-ball fixed bin count is not supported by the ball kernel",
                   "use binWidth (KiMap's setting) or kernel='cube'")
    return Params(
        bin_width=bin_width, bin_count=None if bin_count is None else int(bin_count), kernel_radius=int(radius),
        masked=bool(settings.get("maskedKernel", True)), normalize=bool(settings.get("normalize", False)),
        normalize_scale=settings.get("normalizeScale", 1), remove_outliers=settings.get("removeOutliers"),
        voxel_shift=float(settings.get("voxelArrayShift", 0)), distances=distances,
        symmetric=bool(settings.get("symmetricalGLCM", True)), weighting=weighting, gldm_a=int(alpha),
        label=int(settings.get("label", 1)), ball_radius=float(ball),
    )
