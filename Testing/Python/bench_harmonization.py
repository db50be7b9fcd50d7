"""Benchmark (not a test): does N4 bias-field correction and/or ComBat across institutions help a fixed pipeline,
leave-one-institution-out (LOIO) and leave-one-patient-out (LOPO)? On a phantom cohort (SYNTHETIC DATA).

    python Testing/Python/bench_harmonization.py --features TABLE.csv --n4-features TABLE_N4.csv [--json out.json]

Both tables come from ``kimap extract --cohort`` of the same patients, without and with ``--bias-correction n4``.
The pipeline is fixed (as ``KiMapLib.model.training.build_pipeline`` was when this was written): impute (median) ->
drop constant -> scale -> SelectKBest(f_regression, 20) -> Ridge(alpha=10), on every radiomic column plus age, sex
and tumour type. ComBat (:class:`KiMapLib.model.harmonization.ComBat`, the covariates in its model) is the
pipeline's first step, so it is refitted in every fold on the training rows only. In LOIO the held-out institution
is never seen at fit: ComBat either leaves it unchanged ("combat") or estimates its shift/scale from its own
unlabelled rows ("combat-estimate"; needs a batch of that site's biopsies, impossible for one patient's map).

Also reported per table: the institution effect on the features, the median over features of eta² (share of a
feature's variance explained by the institution, one-way ANOVA), before and after ComBat on all rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from KiMapLib.features.table import read_table
from KiMapLib.model.design import DEFAULT_COVARIATES, design_matrix, radiomic_columns
from KiMapLib.model.harmonization import ComBat


def fixed_pipeline(combat: ComBat | None):
    from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_regression
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [("combat", combat)] if combat is not None else []
    return Pipeline([
        *steps,
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("drop_constant", VarianceThreshold(0.0)),
        ("scale", StandardScaler()),
        ("select", SelectKBest(f_regression, k=20)),
        ("regress", Ridge(alpha=10.0)),
    ])


def metrics(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    residual = measured - predicted
    return {"rmse": float(np.sqrt(np.mean(residual**2))),
            "r2": float(1 - np.sum(residual**2) / np.sum((measured - measured.mean()) ** 2))}


def out_of_fold(make, matrix: np.ndarray, target: np.ndarray, groups: np.ndarray) -> np.ndarray:
    predicted = np.empty_like(target)
    for group in np.unique(groups):
        test = groups == group
        predicted[test] = make().fit(matrix[~test], target[~test]).predict(matrix[test])
    return predicted


def paired_bootstrap(target: np.ndarray, reference: np.ndarray, predicted: np.ndarray, patients: np.ndarray,
                     resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """RMSE(predicted) - RMSE(reference) with a 95 % interval, patients resampled with replacement (paired)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(patients)
    rows = [np.flatnonzero(patients == p) for p in ids]
    differences = []
    for _ in range(resamples):
        take = np.concatenate([rows[i] for i in rng.integers(0, len(ids), len(ids))])
        differences.append(metrics(target[take], predicted[take])["rmse"]
                           - metrics(target[take], reference[take])["rmse"])
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"delta_rmse": metrics(target, predicted)["rmse"] - metrics(target, reference)["rmse"],
            "ci95_low": float(low), "ci95_high": float(high)}


def institution_eta2(features: np.ndarray, institutions: np.ndarray) -> float:
    """Median over features of the share of variance explained by the institution (complete, varying features)."""
    keep = np.all(np.isfinite(features), axis=0) & (np.nanvar(features, axis=0) > 1e-12)
    values = features[:, keep]
    total = np.sum((values - values.mean(axis=0)) ** 2, axis=0)
    between = sum(np.sum(institutions == site) * (values[institutions == site].mean(axis=0) - values.mean(axis=0)) ** 2
                  for site in np.unique(institutions))
    return float(np.median(between / total))


def load(path: Path) -> tuple[list[dict], list[str]]:
    rows = [row for row in read_table(path) if row.get("ki67") is not None]
    rows.sort(key=lambda row: (row["patient_id"], row["biopsy_id"]))
    return rows, radiomic_columns(rows)


def evaluate(path: Path, label: str) -> tuple[dict, dict, dict]:
    """Results, institution effect, and out-of-fold predictions keyed by (variant, scheme) -> {(patient, biopsy):
    (measured, predicted, patient)}."""
    rows, radiomic = load(path)
    columns = radiomic + list(DEFAULT_COVARIATES)
    matrix = design_matrix(rows, columns)
    target = np.array([float(row["ki67"]) for row in rows])
    patients = np.array([row["patient_id"] for row in rows])
    keys = [(row["patient_id"], row["biopsy_id"]) for row in rows]
    institutions = np.array([row["institution"] for row in rows], dtype=object)
    tagged = np.column_stack([institutions, matrix]).astype(object)  # [institution, features..., covariates]
    covariates = list(range(1 + len(radiomic), tagged.shape[1]))
    variants = {
        label: (lambda: fixed_pipeline(None), matrix),
        f"{label}+combat": (lambda: fixed_pipeline(ComBat(0, covariates)), tagged),
        f"{label}+combat-estimate": (lambda: fixed_pipeline(ComBat(0, covariates, unseen_batch="estimate")), tagged),
    }
    results, predictions = {}, {}
    for name, (make, data) in variants.items():
        results[name] = {}
        for scheme, groups in (("loio", institutions), ("lopo", patients)):
            if scheme == "lopo" and name.endswith("estimate"):
                continue  # in LOPO the held-out patient's institution is always seen at fit
            predicted = out_of_fold(make, data, target, groups)
            predictions[name, scheme] = dict(zip(keys, zip(target, predicted, patients, strict=True), strict=True))
            results[name][scheme] = metrics(target, predicted)
            results[name][scheme]["per_institution_rmse"] = {
                site: metrics(target[institutions == site], predicted[institutions == site])["rmse"]
                for site in np.unique(institutions)}
    harmonized = ComBat(0, covariates).fit_transform(tagged)[:, : len(radiomic)]
    effect = {"eta2_institution_median": institution_eta2(matrix[:, : len(radiomic)], institutions),
              "eta2_institution_median_after_combat": institution_eta2(harmonized, institutions),
              "rows": len(rows), "patients": len(np.unique(patients)),
              "institutions": {site: int(np.sum(institutions == site)) for site in np.unique(institutions)}}
    return results, effect, predictions


def add_paired_differences(results: dict, predictions: dict) -> None:
    """Each variant's RMSE minus the plain pipeline's ("none"), on the biopsies both predicted, patients resampled."""
    for (name, scheme), predicted in predictions.items():
        reference = predictions["none", scheme]
        common = sorted(set(predicted) & set(reference))
        target = np.array([reference[key][0] for key in common])
        results[name][scheme]["vs_none"] = paired_bootstrap(
            target, np.array([reference[key][1] for key in common]), np.array([predicted[key][1] for key in common]),
            np.array([reference[key][2] for key in common]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, required=True, help="cohort table without bias correction")
    parser.add_argument("--n4-features", type=Path, required=True, help="the same cohort with --bias-correction n4")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # empty-slice means of all-missing columns
    results, effects, predictions = {}, {}, {}
    for path, label in ((args.features, "none"), (args.n4_features, "n4")):
        found, effects[label], predicted = evaluate(path, label)
        results.update(found)
        predictions.update(predicted)
    add_paired_differences(results, predictions)
    print(f"{'variant':<22} {'LOIO RMSE':>9} {'R2':>6} {'dRMSE vs none [95% CI]':>24} {'LOPO RMSE':>9} {'R2':>6} "
          f"{'dRMSE vs none [95% CI]':>24}  LOIO RMSE per institution")
    for name, result in results.items():
        cells = []
        for scheme in ("loio", "lopo"):
            if scheme not in result:
                cells.append(f"{'':>9} {'':>6} {'':>24}")
                continue
            found, delta = result[scheme], result[scheme]["vs_none"]
            cells.append(f"{found['rmse']:9.3f} {found['r2']:6.3f} {delta['delta_rmse']:+8.3f} "
                         f"[{delta['ci95_low']:+.2f}, {delta['ci95_high']:+.2f}]")
        sites = " ".join(f"{site}:{rmse:.2f}" for site, rmse in result["loio"]["per_institution_rmse"].items())
        print(f"{name:<22} {cells[0]} {cells[1]}  {sites}")
    for label, effect in effects.items():
        print(f"{label}: median eta² of institution over features {effect['eta2_institution_median']:.3f} "
              f"(after ComBat on all rows {effect['eta2_institution_median_after_combat']:.4f}); "
              f"{effect['rows']} biopsies, {effect['patients']} patients, {effect['institutions']}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "institution_effect": effects}, indent=2) + "\n")


if __name__ == "__main__":
    main()
