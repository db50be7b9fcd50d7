"""The model, the fourth stage: from features to ki67.

Takes the cohort table and gives a validated scikit-learn pipeline (:mod:`~KiMapLib.model.training`, leave one
patient out), a model bundle (skops file + card, :mod:`~KiMapLib.model.bundle`: the card's schema and sha256,
every node of the file against KiMap's own allow-list in :mod:`~KiMapLib.model.skops_audit`, the loaded pipeline's
structure in :mod:`~KiMapLib.model.pipeline_check`), and predictions at biopsies (:mod:`~KiMapLib.model.prediction`).
"""
