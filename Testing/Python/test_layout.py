"""The tree follows the data's path: imports point down inputs → region → features → model → maps → export only,
and only the front ends (``KiMapLib/slicer``, ``KiMapLib/web``) import slicer, vtk, qt or trame."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "KiMapLib"

#: Rank of each part of KiMapLib along the data's path; a module may import only parts of lower or equal rank.
RANKS = {
    "errors": 0, "progress": 0, "outputs": 0, "atomic": 0, "resources": 0, "settings": 0, "plotting": 0,
    "limits": 0, "__init__": 0,
    "inputs": 1, "region": 2, "features": 3, "phantom": 3.5, "model": 4, "maps": 5, "export": 6,
    "slicer": 7, "app": 8, "web": 8, "__main__": 9,
    "featuremaps": 3, "mrml_logic": 7,  # deprecated aliases of features.featuremaps and slicer (one release)
}
FRONT_END_PACKAGES = ("slicer", "web")
FRONT_END_MODULES = ("slicer", "vtk", "vtkmodules", "qt", "ctk", "trame", "trame_slicer", "trame_server",
                     "trame_client", "trame_vuetify")


def part_of(module: str) -> str:
    """``KiMapLib.maps.mapping`` -> ``maps``; ``KiMapLib.errors`` -> ``errors``; ``KiMapLib`` -> ``__init__``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def imports_of(path: Path) -> list[str]:
    """Every module imported anywhere in the file (top level and inside functions)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "KiMapLib":
                names += [f"KiMapLib.{a.name}" for a in node.names if a.name != "__version__"]
    return names


def library_modules() -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(ROOT).with_suffix("").parts), p) for p in sorted(LIB.rglob("*.py"))]


def test_every_module_belongs_to_a_known_part():
    unknown = {part_of(name) for name, _ in library_modules()} - set(RANKS)
    assert not unknown, f"modules outside the known stages: {sorted(unknown)}; add them to the layout"


def test_imports_point_down_the_data_path():
    upward = []
    for name, path in library_modules():
        own = RANKS[part_of(name)]
        for imported in imports_of(path):
            if imported.split(".")[0] == "KiMapLib" and RANKS[part_of(imported)] > own:
                upward.append(f"{name} imports {imported}")
    assert not upward, "imports against the data's path:\n" + "\n".join(upward)


def test_import_graph_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from KiMapLib.maps.mapping import compute_map\n")
    assert "KiMapLib.maps.mapping" in imports_of(bad)
    assert RANKS[part_of("KiMapLib.maps.mapping")] > RANKS[part_of("KiMapLib.inputs.images")]


def test_only_front_ends_import_slicer_vtk_qt_or_trame():
    offenders = []
    for name, path in library_modules():
        if part_of(name) in (*FRONT_END_PACKAGES, "mrml_logic"):
            continue
        offenders += [f"{name} imports {m}" for m in imports_of(path) if m.split(".")[0] in FRONT_END_MODULES]
    assert not offenders, "\n".join(offenders)


def test_slicer_module_imports_only_the_adapter():
    kimap_imports = [m for m in imports_of(ROOT / "KiMap" / "KiMap.py") if m.startswith("KiMapLib")]
    assert kimap_imports, "KiMap.py imports nothing of KiMapLib"
    assert all(m == "KiMapLib" or m.startswith("KiMapLib.slicer") for m in kimap_imports), kimap_imports


def test_each_package_says_what_it_takes_and_gives():
    for package in (p for p in LIB.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 80, f"{package.name}/__init__.py needs a docstring saying what it takes and gives"
