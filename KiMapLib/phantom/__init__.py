"""Synthetic biophysical glioblastoma phantom . SYNTHETIC DATA — not patient data.

Cell density and proliferation fields with a necrotic core, an enhancing rim and infiltrative edema
(:mod:`~KiMapLib.phantom.fields`), an MRI signal model giving t1c, t2, flair and adc
(:mod:`~KiMapLib.phantom.mri`), per-institution scanner variation (:mod:`~KiMapLib.phantom.scanner`)
and cohorts with biopsies (:mod:`~KiMapLib.phantom.cohort`). The model is documented in docs/phantom.md.
"""

from KiMapLib.phantom.cohort import (
    MODEL_VERSION,
    SYNTHETIC_NOTICE,
    PhantomPatient,
    generate_cohort,
    generate_patient,
    write_patient,
)
from KiMapLib.phantom.scanner import INSTITUTIONS, Institution

__all__ = [
    "INSTITUTIONS",
    "MODEL_VERSION",
    "SYNTHETIC_NOTICE",
    "Institution",
    "PhantomPatient",
    "generate_cohort",
    "generate_patient",
    "write_patient",
]
