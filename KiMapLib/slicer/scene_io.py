"""Headless MRML scenes (slicer-core, no application): set up, module logics, ``.mrb`` save and load."""

from __future__ import annotations

import tempfile
from pathlib import Path

import slicer

from KiMapLib.errors import KiMapError

#: The application and module logics of the headless scene (none inside Slicer).
HEADLESS: dict[str, object] = {}


def module_logic(name: str):
    """A Slicer module logic (``"Colors"``, ``"Segmentations"``...) in the app or a headless scene, or None."""
    modules = getattr(slicer, "modules", None)
    if modules is not None and hasattr(modules, name.lower()):
        return getattr(modules, name.lower()).logic()
    app = HEADLESS.get("app")
    return app.GetModuleLogic(name) if app is not None else None


def setup_headless_scene(cache_dir: str | Path | None = None):
    """A MRML scene with the application and module logics KiMap needs, set as ``slicer.mrmlScene``.

    For ``slicer-core`` (no Slicer application). Inside Slicer, use ``slicer.mrmlScene`` instead.
    """
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    home = Path(tempfile.mkdtemp(prefix="kimap-slicer-home-"))  # no Slicer install: an empty ColorFiles folder
    (home / "share" / "ColorFiles").mkdir(parents=True)
    app.SetHomeDirectory(str(home))
    app.SetShareDirectory("share")
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    logics = {"Colors": slicer.vtkSlicerColorLogic, "Volumes": slicer.vtkSlicerVolumesLogic,
              "Markups": slicer.vtkSlicerMarkupsLogic, "Tables": slicer.vtkSlicerTablesLogic,
              "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic}
    kept = {}
    for name, cls in logics.items():
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        kept[name] = logic
    remote_io = slicer.vtkMRMLRemoteIOLogic()
    remote_io.SetMRMLScene(scene)
    data_io = slicer.vtkDataIOManagerLogic()
    data_io.SetMRMLApplicationLogic(app)
    data_io.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="kimap-cache-"))
    remote_io.GetCacheManager().SetRemoteCacheDirectory(str(cache))
    scene.SetCacheManager(remote_io.GetCacheManager())
    scene.SetDataIOManager(remote_io.GetDataIOManager())
    HEADLESS.update(app=app, logics=kept, remote_io=remote_io, data_io=data_io, scene=scene)
    slicer.mrmlScene = scene
    return scene


def save_scene_mrb(path: str | Path, scene=None) -> Path:
    """Write the scene with all its data as a Slicer ``.mrb`` bundle."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = scene or slicer.mrmlScene
    if not scene.WriteToMRB(str(path)):
        raise KiMapError(f"could not write {path}", input_name="scene")
    return path


def load_scene_mrb(path: str | Path, scene=None):
    """Read a ``.mrb`` into ``scene`` (a fresh headless scene by default); returns the scene."""
    scene = scene or setup_headless_scene()
    if not Path(path).exists() or not scene.ReadFromMRB(str(path)):
        raise KiMapError(f"could not read {path}", input_name="scene")
    return scene
