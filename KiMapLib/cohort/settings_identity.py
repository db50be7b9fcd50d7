"""The identity of an extraction settings set: its canonical JSON and sha256 (pyradiomics version included)."""

from __future__ import annotations

import hashlib
import json

from KiMapLib.settings import ExtractionSettings


def settings_json(settings: ExtractionSettings) -> str:
    """``settings.to_dict()`` as JSON with sorted keys (the text stored in ``extraction_settings.settings``)."""
    return json.dumps(settings.to_dict(), sort_keys=True)


def settings_digest(settings: ExtractionSettings, pyradiomics_version: str) -> str:
    """sha256 of the settings and the pyradiomics version: features computed with another version are new rows.

    Settings without a bias correction hash as before that option existed (:meth:`ExtractionSettings.identity_dict`).
    """
    text = json.dumps({"settings": settings.identity_dict(), "pyradiomics_version": pyradiomics_version},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
