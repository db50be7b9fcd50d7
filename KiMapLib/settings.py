"""Extraction settings: one definition used by biopsy extraction, the map and the model card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from KiMapLib.errors import KiMapError

#: Sequences KiMap reads: t1c (post-contrast T1, the reference grid), T2, FLAIR, ADC and t1 (pre-contrast T1).
#: Every given sequence is kept for the tumour region and quality checks; a model uses those in its card.
SEQUENCES = ("t1c", "t2", "flair", "adc", "t1")
FEATURE_CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")

#: Allowed range (low, high) of each number; ``min_ball_fraction`` excludes its low end. The model card schema
#: (Resources/model_card.schema.json) carries the same bounds (a test checks that they agree).
BOUNDS = {"ball_radius_mm": (0.5, 50.0), "bin_width": (0.5, 1000.0), "normalize_scale": (1.0, 1000.0),
          "min_ball_fraction": (0.0, 1.0), "n4_shrink_factor": (1, 8), "n4_iterations": (1, 500),
          "n4_fitting_levels": (1, 6)}
#: Settings that must be whole numbers.
INTEGER_SETTINGS = ("n4_shrink_factor", "n4_iterations", "n4_fitting_levels")
#: Bias-field corrections applied to the weighted sequences before z-scoring: none, or N4 (SimpleITK;
#: KiMapLib.inputs.bias_correction). A model card without ``bias_correction`` was made without one ("none").
BIAS_CORRECTIONS = ("none", "n4")
#: The N4 parameters; they matter only with ``bias_correction`` "n4".
N4_SETTINGS = ("n4_shrink_factor", "n4_iterations", "n4_fitting_levels")
#: At most this many grey levels per standard deviation (``normalize_scale / bin_width``): finer bins make texture
#: matrices that do not fit in memory (bin width 1e-9 would need terabytes).
MAX_BINS_PER_SD = 200.0
#: The pyradiomics settings a model may add to KiMap's (binning and resampling are KiMap's own settings).
PYRADIOMICS_EXTRA_KEYS = ("voxelArrayShift", "symmetricalGLCM", "weightingNorm", "gldm_a", "distances")


@dataclass(frozen=True)
class ExtractionSettings:
    """How features are computed around a point; recorded in every model card.

    Intensities are z-scored per sequence inside the image foreground and multiplied by
    ``normalize_scale`` (so ``bin_width`` 25 is a quarter standard deviation). The neighbourhood is a
    ball of ``ball_radius_mm`` around the voxel that contains the point, intersected with the foreground.

    ``bias_correction`` "n4" divides each weighted sequence (t1c, t2, flair, t1; never adc) by its N4 bias field
    before the z-score: fitted inside the foreground on a copy shrunk by ``n4_shrink_factor``, with
    ``n4_iterations`` per fitting level and ``n4_fitting_levels`` levels, applied at full resolution. Two levels
    (a B-spline mesh of 2 intervals per axis) fit the smooth receive-coil field; with four, the field followed the
    enhancing rim of the phantom's tumours and removed most of its contrast (median over 30 phantom patients of
    rim/normal t1c 1.355 as acquired, 1.351 after 2 levels, 1.109 after 4).
    """

    ball_radius_mm: float = 5.0
    bin_width: float = 25.0
    normalize_scale: float = 100.0
    normalization: str = "zscore-within-foreground"
    foreground: str = "nonzero-t1c-or-otsu"
    feature_classes: tuple[str, ...] = FEATURE_CLASSES
    min_ball_fraction: float = 0.5
    pyradiomics_extra: dict = field(default_factory=dict)
    bias_correction: str = "none"
    n4_shrink_factor: int = 4
    n4_iterations: int = 50
    n4_fitting_levels: int = 2  # 4 (ITK's 4 -> 32 control points) follows an enhancing tumour as if it were bias

    def pyradiomics_settings(self) -> dict:
        """Settings in pyradiomics' vocabulary (image already normalized, no resampling)."""
        settings = {
            "binWidth": self.bin_width,
            "normalize": False,
            "resampledPixelSpacing": None,
            "force2D": False,
            "label": 1,
            "additionalInfo": False,
            "minimumROIDimensions": 1,
            "minimumROISize": 1,
            "correctMask": False,
        }
        settings.update(self.pyradiomics_extra)
        return settings

    def check(self, input_name: str = "extraction settings") -> None:
        """Raise KiMapError naming the first setting outside its bounds (before any computation)."""
        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            number = (int,) if name in INTEGER_SETTINGS else (int, float)
            inside = isinstance(value, number) and not isinstance(value, bool) and (
                low < value <= high if name == "min_ball_fraction" else low <= value <= high)
            if not inside:
                raise KiMapError(f"{name} {value!r} is outside {'(' if name == 'min_ball_fraction' else '['}"
                                 f"{low:g}, {high:g}]" + (" or not a whole number" if name in INTEGER_SETTINGS
                                                          else ""), input_name=f"{input_name}: {name}")
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise KiMapError(f"unknown bias correction {self.bias_correction!r}",
                             input_name=f"{input_name}: bias_correction", hint=f"use {' or '.join(BIAS_CORRECTIONS)}")
        if self.normalize_scale / self.bin_width > MAX_BINS_PER_SD:
            raise KiMapError(f"bin_width {self.bin_width:g} gives more than {MAX_BINS_PER_SD:g} grey levels per "
                             f"standard deviation (normalize_scale {self.normalize_scale:g})",
                             input_name=f"{input_name}: bin_width",
                             hint=f"use bin_width >= {self.normalize_scale / MAX_BINS_PER_SD:g}")
        unknown = sorted(set(self.feature_classes) - set(FEATURE_CLASSES))
        if unknown or not self.feature_classes:
            raise KiMapError(f"unknown feature class(es) {', '.join(unknown) or '(none given)'}",
                             input_name=f"{input_name}: feature_classes", hint=f"use {', '.join(FEATURE_CLASSES)}")
        extra = sorted(set(self.pyradiomics_extra) - set(PYRADIOMICS_EXTRA_KEYS))
        if extra:
            raise KiMapError(f"pyradiomics setting(s) {', '.join(map(str, extra))} may not be changed",
                             input_name=f"{input_name}: pyradiomics_extra",
                             hint=f"only {', '.join(PYRADIOMICS_EXTRA_KEYS)}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["feature_classes"] = list(self.feature_classes)
        return data

    def identity_dict(self) -> dict:
        """:meth:`to_dict` without the preprocessing settings that change nothing (the N4 parameters when
        ``bias_correction`` is "none", and ``bias_correction`` "none" itself): the settings of tables and databases
        made before those settings existed keep their identity."""
        data = self.to_dict()
        if self.bias_correction == "none":
            for name in ("bias_correction", *N4_SETTINGS):
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ExtractionSettings:
        """Settings from a card, sidecar or database; a missing ``bias_correction`` means "none" (made before the
        option existed), whatever the current default."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.setdefault("bias_correction", "none")
        if "feature_classes" in known:
            known["feature_classes"] = tuple(known["feature_classes"])
        return cls(**known)
