"""End-to-end whole-tumour feature maps of the TCGA case from three sequences (issue: <= 10 s on this machine).

    .venv/bin/python Testing/Python/bench_tcga_map.py [--repeats 3]

Per sequence (t1c, t2, flair): read, foreground, z-score x100, then ``feature_maps`` at full geometry with KiMap's
map settings (ball 5 mm, binWidth 25, kernel mask = foreground) for 15 features of all six classes. Prints the
wall time per sequence and in total (median of the repeats) and the peak RSS. Not a test (no timed assertions).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from KiMapLib.featuremaps import feature_maps
from KiMapLib.normalization import foreground_mask, zscore
from KiMapLib.settings import ExtractionSettings

TCGA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tcga-du-7294"
FEATURES = [
    "original_firstorder_Mean", "original_firstorder_Entropy", "original_firstorder_Variance",
    "original_glcm_Contrast", "original_glcm_Correlation", "original_glcm_JointEntropy", "original_glcm_Idm",
    "original_glcm_ClusterShade", "original_glrlm_RunLengthNonUniformity", "original_glrlm_GrayLevelNonUniformity",
    "original_glszm_ZoneEntropy", "original_glszm_SmallAreaEmphasis", "original_gldm_DependenceEntropy",
    "original_ngtdm_Busyness", "original_ngtdm_Coarseness",
]


def one_run(tumour: np.ndarray) -> dict[str, float]:
    settings = ExtractionSettings().pyradiomics_settings() | {"ballRadius": 5.0}
    seconds = {}
    for name in ("t1c", "t2", "flair"):
        start = time.perf_counter()
        image = sitk.ReadImage(str(TCGA / f"{name}.nii.gz"), sitk.sitkFloat32)
        foreground = foreground_mask(image)
        normalized = zscore(image, foreground, 100.0, name)
        mask = sitk.GetImageFromArray((tumour & foreground).astype(np.uint8))
        mask.CopyInformation(normalized)
        kernel_mask = sitk.GetImageFromArray(foreground.astype(np.uint8))
        kernel_mask.CopyInformation(normalized)
        maps = feature_maps(normalized, mask, settings, FEATURES, kernel="ball", kernel_mask=kernel_mask)
        assert len(maps) == len(FEATURES)
        seconds[name] = time.perf_counter() - start
    seconds["total"] = sum(seconds.values())
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(TCGA / "tumor_seg_isen20.nii.gz"))) > 0
    one_run(tumour)  # warm-up: loads the numba cache
    runs = [one_run(tumour) for _ in range(args.repeats)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("end-to-end TCGA map, 3 sequences x 15 features, ball 5 mm, binWidth 25 (median of "
          f"{args.repeats}): " + ", ".join(f"{k} {v:.1f} s" for k, v in median.items()))
    print("runs (total s): " + ", ".join(f"{r['total']:.1f}" for r in runs))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
