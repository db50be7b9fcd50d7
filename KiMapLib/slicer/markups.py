"""Biopsy points from markups nodes (world RAS), checked against the t1c volume."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import SimpleITK as sitk

from KiMapLib.errors import BiopsyError, KiMapError
from KiMapLib.inputs import geometry


def biopsies_from_markups(markups_node, patient_id: str | None = None,
                          covariates: Mapping[str, object] | None = None) -> list:
    """The defined control points of a markups node as :class:`KiMapLib.inputs.biopsies.Biopsy` (world RAS)."""
    from KiMapLib.inputs.biopsies import Biopsy

    if markups_node is None or not markups_node.IsA("vtkMRMLMarkupsNode"):
        raise KiMapError("no markups node selected", input_name="biopsies", hint="place biopsy points first")
    patient = patient_id or markups_node.GetAttribute("KiMap.PatientId") or "patient"
    biopsies, seen = [], set()
    for index in range(markups_node.GetNumberOfControlPoints()):
        if markups_node.GetNthControlPointPositionStatus(index) != markups_node.PositionDefined:
            continue
        label = markups_node.GetNthControlPointLabel(index) or f"B{index + 1}"
        if label in seen:
            raise BiopsyError(f"point label '{label}' is used twice in '{markups_node.GetName()}'",
                              input_name="biopsies", hint="give each point a unique label")
        seen.add(label)
        ras = np.zeros(3)
        markups_node.GetNthControlPointPositionWorld(index, ras)
        if not np.all(np.isfinite(ras)):
            raise BiopsyError(f"point '{label}' of '{markups_node.GetName()}' has a non-finite position {ras.tolist()}",
                              input_name="biopsies", hint="place the point again")
        biopsies.append(Biopsy(patient_id=patient, biopsy_id=label, ras=ras.copy(), covariates=dict(covariates or {})))
    if not biopsies:
        raise KiMapError(f"'{markups_node.GetName()}' has no placed points", input_name="biopsies",
                         hint="place at least one biopsy point")
    return biopsies


def check_points_inside(biopsies: list, reference: sitk.Image) -> None:
    """Raise naming the first point that lies outside the t1c volume."""
    for biopsy in biopsies:
        if geometry.nearest_voxel(reference, biopsy.ras) is None:
            r, a, s = (float(v) for v in biopsy.ras)
            raise BiopsyError(f"point {biopsy.biopsy_id} (R {r:.1f}, A {a:.1f}, S {s:.1f}) is outside the t1c volume",
                              input_name="biopsies", hint="move the point into the imaged volume")
