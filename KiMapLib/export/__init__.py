"""Export, the last stage: a map folder made ready for radiation planning.

Takes the output of a map and the t1c DICOM series and gives DICOM Parametric Maps, an RT Structure Set of
iso-level contours, NRRD and NIfTI (:mod:`~KiMapLib.export.planning`).
"""
