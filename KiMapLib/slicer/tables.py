"""The biopsy table node: KiMap's columns, filling it, reading it back, CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import vtk

#: Biopsy table columns: (name, vtk array class, title shown in the table view, unit).
TABLE_COLUMNS = (
    ("biopsy", "vtkStringArray", "Biopsy", ""),
    ("predicted_ki67", "vtkDoubleArray", "Predicted ki67", "%"),
    ("ki67_lower", "vtkDoubleArray", "Lower bound", "%"),
    ("ki67_upper", "vtkDoubleArray", "Upper bound", "%"),
    ("probability_high", "vtkDoubleArray", "P(high)", ""),
    ("ood_score", "vtkDoubleArray", "Out-of-domain score", ""),
    ("measured_ki67", "vtkDoubleArray", "Measured ki67", "%"),
    ("r", "vtkDoubleArray", "R", "mm"),
    ("a", "vtkDoubleArray", "A", "mm"),
    ("s", "vtkDoubleArray", "S", "mm"),
    ("drivers", "vtkStringArray", "Largest contributions (ki67 points)", ""),
    ("note", "vtkStringArray", "Note", ""),
)


def table_values(table_node) -> list[dict[str, object]]:
    """Rows of a table node as dicts (strings and floats)."""
    table = table_node.GetTable()
    rows = []
    for row in range(table.GetNumberOfRows()):
        values = {}
        for column in range(table.GetNumberOfColumns()):
            array = table.GetColumn(column)
            value = array.GetValue(row)
            values[array.GetName()] = value if isinstance(value, str) else float(value)
        rows.append(values)
    return rows


def measured_ki67_from_table(table_node) -> dict[str, float]:
    """Measured ki67 by biopsy label from a KiMap table node (entries typed in by the user)."""
    if table_node is None or table_node.GetTable().GetColumnByName("measured_ki67") is None:
        return {}
    from KiMapLib.inputs.biopsies import check_ki67

    measured = {}
    for row in table_values(table_node):
        value = row.get("measured_ki67")
        if isinstance(value, float) and math.isnan(value):
            continue  # an empty cell
        where = f"table '{table_node.GetName()}', point {row.get('biopsy')}"
        number = check_ki67(value, where, "measured_ki67", "biopsy table")  # 0-100 %, else refused naming the row
        if number is not None:
            measured[str(row.get("biopsy"))] = number
    return measured


def fill_table(table_node, records: list[dict[str, object]]) -> None:
    arrays = []
    for name, class_name, _title, _unit in TABLE_COLUMNS:
        array = getattr(vtk, class_name)()
        array.SetName(name)
        for record in records:
            value = record.get(name)
            if class_name == "vtkStringArray":
                array.InsertNextValue("" if value is None else str(value))
            else:
                array.InsertNextValue(math.nan if value is None else float(value))
        arrays.append(array)
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    for array in arrays:
        table_node.AddColumn(array)
    for name, class_name, title, unit in TABLE_COLUMNS:
        table_node.SetColumnTitle(name, title)
        table_node.SetColumnUnitLabel(name, unit)
        table_node.SetColumnType(name, vtk.VTK_STRING if class_name == "vtkStringArray" else vtk.VTK_DOUBLE)
    table_node.SetColumnDescription("measured_ki67", "ki67 measured on the biopsy (%); type it in")
    table_node.SetColumnDescription("probability_high", "probability that ki67 is above the model's threshold")
    table_node.SetColumnDescription("ki67_lower", "lower end of the prediction interval (the model card's level, 90 %)")
    table_node.SetColumnDescription("ki67_upper", "upper end of the prediction interval")
    table_node.SetColumnDescription("ood_score", "distance of the point's features from the training biopsies' in "
                                    "units of the model's threshold: above 1, out of the model's domain")
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetLocked(False)  # measured ki67 is edited in the table view
    table_node.Modified()
    table_node.EndModify(was_modifying)


def write_table_csv(table_node, path: str | Path) -> Path:
    """A KiMap biopsy table as CSV (column names as in :data:`TABLE_COLUMNS`, empty for missing values)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = table_values(table_node)
    names = [table_node.GetTable().GetColumn(i).GetName() for i in range(table_node.GetNumberOfColumns())]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()})
    tmp.replace(path)
    return path
