"""Extraction settings: one definition used by biopsy extraction, the map and the model card."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: Sequences KiMap reads: t1c (post-contrast T1, the reference grid), T2, FLAIR, ADC and t1 (pre-contrast T1).
#: Every given sequence is kept for the tumour region and quality checks; a model uses those in its card.
SEQUENCES = ("t1c", "t2", "flair", "adc", "t1")
FEATURE_CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


@dataclass(frozen=True)
class ExtractionSettings:
    """How features are computed around a point; recorded in every model card.

    Intensities are z-scored per sequence inside the image foreground and multiplied by
    ``normalize_scale`` (so ``bin_width`` 25 is a quarter standard deviation). The neighbourhood is a
    ball of ``ball_radius_mm`` around the voxel that contains the point, intersected with the foreground.
    """

    ball_radius_mm: float = 5.0
    bin_width: float = 25.0
    normalize_scale: float = 100.0
    normalization: str = "zscore-within-foreground"
    foreground: str = "nonzero-t1c-or-otsu"
    feature_classes: tuple[str, ...] = FEATURE_CLASSES
    min_ball_fraction: float = 0.5
    pyradiomics_extra: dict = field(default_factory=dict)

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

    def to_dict(self) -> dict:
        data = asdict(self)
        data["feature_classes"] = list(self.feature_classes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ExtractionSettings:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "feature_classes" in known:
            known["feature_classes"] = tuple(known["feature_classes"])
        return cls(**known)
