"""Statistics -> rows -> ``vtkMRMLTableNode`` (shown in the module's qMRMLTableView).

``statistics_rows`` is pure Python (testable anywhere); ``update_table_node``
only needs MRML.
"""
from __future__ import annotations

from typing import Any

COLUMNS = ("Structure", "Volume (mL)", "Longest axial diameter (mm)", "Centroid R (mm)", "Centroid A (mm)",
           "Centroid S (mm)")


def statistics_dict(statistics: Any) -> dict:
    """Accept an engine ``Statistics`` object or its ``to_dict()`` form."""
    if statistics is None:
        return {}
    if isinstance(statistics, dict):
        return statistics
    if hasattr(statistics, "to_dict"):
        return statistics.to_dict()
    return dict(vars(statistics))


def _lesion(lesion: Any) -> dict:
    if isinstance(lesion, dict):
        return lesion
    if hasattr(lesion, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(lesion)
    return dict(vars(lesion))


def statistics_rows(statistics: Any) -> list[list[str]]:
    """One row for the liver, one per lesion, and totals; numbers as display strings.

    Centroids are converted from the engine's LPS to Slicer's RAS.
    """
    s = statistics_dict(statistics)
    rows: list[list[str]] = []

    def num(v: Any, fmt: str = "{:.1f}") -> str:
        return "" if v is None else fmt.format(float(v))

    rows.append(["Liver", num(s.get("liver_ml")), "", "", "", ""])
    for lesion in s.get("lesions") or []:
        d = _lesion(lesion)
        c = d.get("centroid_lps")
        ras = ["", "", ""] if c is None else [num(-float(c[0])), num(-float(c[1])), num(float(c[2]))]
        rows.append([f"Liver tumor {d.get('index', len(rows))}", num(d.get("volume_ml"), "{:.2f}"),
                     num(d.get("longest_axial_diameter_mm")), *ras])
    rows.append([f"All tumors (n={int(s.get('tumor_count') or 0)})", num(s.get("tumor_ml"), "{:.2f}"), "", "", "", ""])
    rows.append(["Tumor burden (% of liver)", num(s.get("burden_percent"), "{:.2f}"), "", "", "", ""])
    if s.get("confidence") is not None:  # --uncertainty: mean liver Dice of the test-time variants
        rows.append(["Confidence (review below 0.90)", num(s.get("confidence"), "{:.3f}"), "", "", "", ""])
    return rows


def update_table_node(tableNode, statistics: Any) -> None:
    """Replace the table node's content with the statistics (string columns)."""
    import vtk

    table = vtk.vtkTable()
    rows = statistics_rows(statistics)
    for name in COLUMNS:
        col = vtk.vtkStringArray()
        col.SetName(name)
        col.SetNumberOfValues(len(rows))
        table.AddColumn(col)
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            table.GetColumn(c).SetValue(r, value)
    tableNode.SetAndObserveTable(table)
    tableNode.SetUseColumnTitleAsColumnHeader(True) if hasattr(tableNode, "SetUseColumnTitleAsColumnHeader") else None
    tableNode.SetLocked(True) if hasattr(tableNode, "SetLocked") else None
    tableNode.Modified()
