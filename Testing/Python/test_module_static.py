"""Static checks of the Slicer module (it needs the Slicer application to import, so it is parsed, not imported)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "KiMap" / "KiMap.py"
UI = ROOT / "Resources" / "UI" / "KiMap.ui"
OWN_FILES = [MODULE, *sorted((ROOT / "KiMapLib" / "slicer").glob("*.py")),
             ROOT / "Testing" / "Python" / "test_mrml_logic.py", Path(__file__)]


def module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(), filename=str(MODULE))


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def ui_parameter_names() -> dict[str, str]:
    """SlicerParameterName (a dynamic property) of each widget that has one."""
    names = {}
    for widget in ET.parse(UI).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                names[widget.get("name")] = prop.findtext("string")
    return names


def parameter_node_fields() -> dict[str, str]:
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(
                ast.unparse(d).endswith("parameterNodeWrapper") for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in KiMap.py")


def test_every_ui_widget_used_in_module_exists():
    used = {n.attr for n in ast.walk(module_tree())
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"
            and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert used, "KiMap.py uses no self.ui widgets?"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"widgets used in KiMap.py but absent from KiMap.ui: {missing}"


def test_every_ui_parameter_exists_in_parameter_node():
    fields = parameter_node_fields()
    names = ui_parameter_names()
    missing = sorted({p for p in names.values() if p not in fields})
    assert not missing, f"SlicerParameterName values with no parameter node field: {missing}"
    # Every sequence selector and the main inputs are bound.
    for widget in ("t1cSelector", "t2Selector", "flairSelector", "adcSelector", "regionSelector",
                   "biopsyMarkupsSelector", "biopsyTableSelector", "ki67MapSelector"):
        assert widget in names, f"{widget} has no SlicerParameterName"


def test_parameter_types_match_widgets():
    fields = parameter_node_fields()
    widgets = ui_widgets()
    for widget_name, parameter in ui_parameter_names().items():
        widget_class = widgets[widget_name].get("class")
        annotation = fields[parameter]
        if widget_class == "qMRMLNodeComboBox":
            node_types = [s.text for s in widgets[widget_name].iter("string")
                          if s.text and s.text.startswith("vtkMRML")]
            for node_type in node_types:
                assert node_type in annotation, f"{parameter}: {annotation} does not accept {node_type}"
        elif widget_class == "QCheckBox":
            assert annotation == "bool", parameter
        elif widget_class == "ctkSliderWidget":
            assert "float" in annotation, parameter
        elif widget_class == "ctkPathLineEdit":
            assert annotation == "Path", parameter


def test_ui_is_well_formed():
    root = ET.parse(UI).getroot()
    assert root.findtext("class") == "KiMap"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    qt_classes = {"QLabel", "QPushButton", "QCheckBox", "QProgressBar", "QComboBox"}
    for widget in root.iter("widget"):
        assert widget.get("class") in declared | qt_classes, widget.get("class")
    sections = [w.findtext("property/string") for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"]
    assert sections == ["Inputs", "Model", "Biopsies", "Map", "Export"]


def test_module_metadata_is_filled_in():
    assigned = {}
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = ast.unparse(node.targets[0])
            if target.startswith("self.parent."):
                assigned[target.removeprefix("self.parent.")] = node.value
    for name in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert name in assigned, f"KiMap module does not set {name}"
        value = ast.literal_eval(assigned[name])
        assert value, f"{name} is empty"
    assert "Research use only" in ast.literal_eval(assigned["helpText"])


def test_module_classes_and_test_are_present():
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in module_tree().body if isinstance(n, ast.ClassDef)}
    assert "ScriptedLoadableModule" in classes["KiMap"]
    assert "ScriptedLoadableModuleWidget" in classes["KiMapWidget"]
    assert "ScriptedLoadableModuleLogic" in classes["KiMapLogic"]
    assert "ScriptedLoadableModuleTest" in classes["KiMapTest"]
    source = MODULE.read_text()
    assert "urlretrieve" not in source and "downloadFromURL" not in source, "the self-test must not download"


def test_extension_cmake():
    top = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"project\(KiMap\)", top)
    assert re.search(r"set\(EXTENSION_DEPENDS\s+SlicerRadiomics", top)
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf"set\({key}\s+\S", top), key
    assert "add_subdirectory(KiMap)" in top
    module = (ROOT / "KiMap" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in module and "${MODULE_NAME}.py" in module
    assert "KiMapLib/*.py" in module and "Resources/*" in module
    assert "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in module


def test_resources_for_slicer():
    from KiMapLib.resources import color_table_path

    lines = [line.split() for line in color_table_path().read_text().splitlines() if line and line[0] != "#"]
    assert [int(parts[0]) for parts in lines] == list(range(256))
    assert all(len(parts) == 6 and all(0 <= int(v) <= 255 for v in parts[2:]) for parts in lines)
    icon = ROOT / "Resources" / "Icons" / "KiMap.png"
    header = icon.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(header[16:20], "big") == 128 and int.from_bytes(header[20:24], "big") == 128


def _ruff() -> str | None:
    candidates = [shutil.which("ruff"), Path(sys.executable).parent / "ruff", ROOT / ".venv" / "bin" / "ruff"]
    return next((str(c) for c in candidates if c and Path(c).exists()), None)


@pytest.mark.skipif(_ruff() is None, reason="ruff not installed")
def test_ruff_clean():
    files = [str(p) for p in OWN_FILES if p.exists()]
    result = subprocess.run([_ruff(), "check", *files], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
