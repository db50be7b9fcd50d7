"""Dice per label of the automatic tumour segmentation on synthetic patients (a seed never used for training).

Run: ``python Testing/Python/bench_region_phantom.py [--patients 6] [--seed 4242]``. A report, not a test: the
phantom's anatomy is simplified (see the README's tumour-region section for what it shows).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import SimpleITK as sitk

from KiMapLib.inputs.case import prepare_case
from KiMapLib.phantom import INSTITUTIONS, generate_patient
from KiMapLib.region.tumour_region import propose_region

#: Phantom labels (1 necrotic, 2 enhancing, 3 oedema) -> BraTS labels (1 necrotic, 2 oedema, 3 enhancing).
PHANTOM_TO_BRATS = np.array([0, 1, 3, 2], dtype=np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum() + b.sum())
    return round(2.0 * float((a & b).sum()) / total, 3) if total else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--seed", type=int, default=4242)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows = []
    for number in range(args.patients):
        patient = generate_patient(f"SYN{number + 1:03d}", rng, INSTITUTIONS[number % len(INSTITUTIONS)])
        truth = PHANTOM_TO_BRATS[sitk.GetArrayFromImage(patient.label)]
        region = propose_region(prepare_case(patient.images))
        found = region.labels
        brain_ml = float(np.prod(patient.label.GetSpacing())) / 1000 * (sitk.GetArrayViewFromImage(
            patient.images["t1c"]) != 0).sum()
        row = {"patient": patient.patient_id, "problems": region.problems,
               "tumour_fraction_of_brain": round(float((truth > 0).sum()) * float(np.prod(
                   patient.label.GetSpacing())) / 1000 / brain_ml, 2),
               "whole": dice(found > 0, truth > 0),
               **{f"label_{v}": dice(found == v, truth == v) for v in (1, 2, 3)}}
        rows.append(row)
        print(json.dumps(row))
    whole = [r["whole"] for r in rows if r["whole"] is not None]
    print(json.dumps({"patients": len(rows), "refused": sum(bool(r["problems"]) for r in rows),
                      "median_whole_dice": float(np.median(whole)) if whole else None}))


if __name__ == "__main__":
    main()
