"""Inputs, the first stage: what the user gives, read, checked and aligned.

Takes image files or DICOM series folders (t1, t1c, t2, flair, adc), biopsy points (CSV or Slicer ``.mrk.json``)
and gives SimpleITK images on the exact t1c grid with their physical geometry, biopsies in RAS millimetres, and
a prepared :class:`~KiMapLib.inputs.case.Case` (foreground, normalized sequences). RAS (Slicer) ↔ LPS (ITK)
conversion lives here, in :mod:`~KiMapLib.inputs.geometry`, and nowhere else.
"""
