"""Features, the third stage: radiomics around points and at every voxel.

Takes a prepared case and biopsy points and gives pyradiomics features of the ball around each point
(:mod:`~KiMapLib.features.extraction`), the cohort table (:mod:`~KiMapLib.features.table`), and — with the
voxel-wise engine :mod:`~KiMapLib.features.featuremaps` — the same features at every voxel of a region.
"""
