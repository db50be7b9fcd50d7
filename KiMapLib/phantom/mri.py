"""MRI signal model of the phantom: tissue compartments -> t1c, t2, flair (relative units) and adc.

A voxel is a mixture of necrosis (fraction n) and viable tissue (1 - n). Viable tissue holds tumour
cells (volume fraction ``MAX_CELL_VOLUME * c``), normal brain (WM/GM/CSF, only outside the enhancing
bulk) and water (interstitial in the bulk, vasogenic edema outside it). Each compartment has a fixed
relative signal per sequence (``TISSUE``); contrast enhancement adds ``ENHANCEMENT_GAIN * K`` to t1c,
modulated by microvascular speckle. Values are qualitative (typical relative contrasts at 1.5-3 T), not
fitted to any scanner; see docs/phantom.md. SYNTHETIC: no clinical validity.
"""

from __future__ import annotations

import numpy as np

from KiMapLib.phantom.fields import MAX_CELL_VOLUME, Anatomy

#: Relative signal of each compartment (t1c, t2, flair dimensionless; adc in 1e-6 mm^2/s). "interstitial" is
#: the tortuous extracellular water between tumour cells in the bulk, "edema" vasogenic edema water.
TISSUE: dict[str, dict[str, float]] = {
    "t1c": dict(wm=1.00, gm=0.80, csf=0.30, cells=0.72, interstitial=0.50, edema=0.45, necrosis=0.38),
    "t2": dict(wm=0.55, gm=0.75, csf=1.80, cells=0.90, interstitial=1.25, edema=1.60, necrosis=1.50),
    "flair": dict(wm=0.60, gm=0.80, csf=0.18, cells=1.00, interstitial=1.20, edema=1.50, necrosis=0.85),
    "adc": dict(wm=760.0, gm=850.0, csf=3000.0, cells=500.0, interstitial=1900.0, edema=2300.0, necrosis=2500.0),
}
#: Relative sd of the interstitial-water ADC (tortuosity of the extracellular matrix, not tied to ki67).
MATRIX_ADC_SD = 0.15
#: t1c gain per unit contrast leakage K.
ENHANCEMENT_GAIN = 1.4


def compartments(anatomy: Anatomy) -> dict[str, np.ndarray]:
    """Volume fractions of the viable-tissue compartments (they sum to 1) and the necrotic fraction n."""
    cells = MAX_CELL_VOLUME * anatomy.density
    normal = (1.0 - anatomy.bulk) * np.clip(1.0 - cells - anatomy.water, 0.0, 1.0)
    interstitial = anatomy.bulk * (1.0 - cells)
    edema = 1.0 - cells - normal - interstitial
    return {"cells": cells, "normal": normal, "interstitial": interstitial, "edema": edema,
            "necrosis": anatomy.necrosis}


def intrinsic_signals(anatomy: Anatomy) -> dict[str, np.ndarray]:
    """Noise-free, scanner-independent signal of every sequence on the anatomy lattice (float32)."""
    parts = compartments(anatomy)
    viable = 1.0 - parts["necrosis"]
    signals = {}
    for sequence, table in TISSUE.items():
        normal = anatomy.wm * table["wm"] + anatomy.gm * table["gm"] + anatomy.csf * table["csf"]
        interstitial = table["interstitial"]
        if sequence == "adc":
            interstitial = interstitial * np.clip(1.0 + MATRIX_ADC_SD * anatomy.matrix, 0.5, 1.5)
        value = parts["necrosis"] * table["necrosis"] + viable * (
            parts["cells"] * table["cells"] + parts["normal"] * normal
            + parts["interstitial"] * interstitial + parts["edema"] * table["edema"])
        if sequence == "t1c":
            value = value + ENHANCEMENT_GAIN * np.maximum(anatomy.leak * (1.0 + anatomy.speckle), 0.0)
        signals[sequence] = np.ascontiguousarray(value, dtype=np.float32)
    return signals
