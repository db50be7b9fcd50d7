"""The model, the fourth stage: from features to ki67.

Takes the cohort table and gives a validated scikit-learn pipeline (:mod:`~KiMapLib.model.training`, leave one
patient out), a model bundle (skops file + card, checked against KiMap's own allow-list and the card's sha256,
:mod:`~KiMapLib.model.bundle`), and predictions at biopsies (:mod:`~KiMapLib.model.prediction`).
"""
