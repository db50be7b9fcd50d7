"""Synthetic biophysical glioblastoma phantom . SYNTHETIC DATA — not patient data.

Cell density and proliferation fields with a necrotic core, an enhancing rim and infiltrative edema
(:mod:`~KiMapLib.phantom.fields`), an MRI signal model giving t1c, t2, flair and adc
(:mod:`~KiMapLib.phantom.mri`), per-institution scanner variation (:mod:`~KiMapLib.phantom.scanner`)
and cohorts with biopsies (:mod:`~KiMapLib.phantom.cohort`). The model is documented in docs/phantom.md.
"""

from KiMapLib.phantom.cohort import (
    DEMO_SEED,
    MODEL_VERSION,
    SYNTHETIC_NOTICE,
    PhantomPatient,
    cohort_patient,
    demo_patient,
    generate_cohort,
    generate_patient,
    write_patient,
)
from KiMapLib.phantom.scanner import INSTITUTIONS, Institution

__all__ = [
    "DEMO_SEED",
    "INSTITUTIONS",
    "MODEL_VERSION",
    "SYNTHETIC_NOTICE",
    "Institution",
    "PhantomPatient",
    "cohort_patient",
    "demo_patient",
    "generate_cohort",
    "generate_patient",
    "write_patient",
]
