"""Feature names per class, in pyradiomics' vocabulary, and parsing of ``original_<class>_<Feature>`` keys."""

from __future__ import annotations

from collections.abc import Iterable

from KiMapLib.errors import KiMapError

CLASSES = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")

#: Non-deprecated features of each class, in the order the numba kernels write them.
FEATURES: dict[str, tuple[str, ...]] = {
    "firstorder": ("Energy", "TotalEnergy", "Entropy", "Minimum", "10Percentile", "90Percentile", "Maximum", "Mean",
                   "Median", "InterquartileRange", "Range", "MeanAbsoluteDeviation", "RobustMeanAbsoluteDeviation",
                   "RootMeanSquared", "Skewness", "Kurtosis", "Variance", "Uniformity"),
    "glcm": ("Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast",
             "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "JointEnergy",
             "JointEntropy", "Imc1", "Imc2", "Idm", "Idmn", "Id", "Idn", "InverseVariance", "MaximumProbability",
             "SumAverage", "SumEntropy", "SumSquares", "MCC"),
    "glrlm": ("ShortRunEmphasis", "LongRunEmphasis", "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized",
              "RunLengthNonUniformity", "RunLengthNonUniformityNormalized", "RunPercentage", "GrayLevelVariance",
              "RunVariance", "RunEntropy", "LowGrayLevelRunEmphasis", "HighGrayLevelRunEmphasis",
              "ShortRunLowGrayLevelEmphasis", "ShortRunHighGrayLevelEmphasis", "LongRunLowGrayLevelEmphasis",
              "LongRunHighGrayLevelEmphasis"),
    "glszm": ("SmallAreaEmphasis", "LargeAreaEmphasis", "GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized",
              "SizeZoneNonUniformity", "SizeZoneNonUniformityNormalized", "ZonePercentage", "GrayLevelVariance",
              "ZoneVariance", "ZoneEntropy", "LowGrayLevelZoneEmphasis", "HighGrayLevelZoneEmphasis",
              "SmallAreaLowGrayLevelEmphasis", "SmallAreaHighGrayLevelEmphasis", "LargeAreaLowGrayLevelEmphasis",
              "LargeAreaHighGrayLevelEmphasis"),
    "gldm": ("SmallDependenceEmphasis", "LargeDependenceEmphasis", "GrayLevelNonUniformity",
             "DependenceNonUniformity", "DependenceNonUniformityNormalized", "GrayLevelVariance",
             "DependenceVariance", "DependenceEntropy", "LowGrayLevelEmphasis", "HighGrayLevelEmphasis",
             "SmallDependenceLowGrayLevelEmphasis", "SmallDependenceHighGrayLevelEmphasis",
             "LargeDependenceLowGrayLevelEmphasis", "LargeDependenceHighGrayLevelEmphasis"),
    "ngtdm": ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength"),
}

PREFIX = "original"


def key(feature_class: str, feature: str) -> str:
    """The pyradiomics result key, e.g. ``original_glcm_Contrast``."""
    return f"{PREFIX}_{feature_class}_{feature}"


ALL_KEYS: tuple[str, ...] = tuple(key(c, f) for c in CLASSES for f in FEATURES[c])


def parse_features(features: Iterable[str] | None) -> dict[str, list[str]]:
    """Requested features grouped by class (class order kept); ``None`` means every feature of the six classes."""
    if features is None:
        return {c: list(FEATURES[c]) for c in CLASSES}
    if isinstance(features, str):
        features = [features]
    wanted: dict[str, list[str]] = {}
    for name in features:
        parts = str(name).split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX or parts[1] not in FEATURES or parts[2] not in FEATURES[parts[1]]:
            raise KiMapError(f"unknown feature '{name}'", input_name="features",
                             hint="use pyradiomics keys such as original_glcm_Contrast (shape features are not maps)")
        if parts[2] not in wanted.setdefault(parts[1], []):
            wanted[parts[1]].append(parts[2])
    if not wanted:
        raise KiMapError("no feature requested", input_name="features", hint="give at least one key, or None for all")
    return {c: wanted[c] for c in CLASSES if c in wanted}
