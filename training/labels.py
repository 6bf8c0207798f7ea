"""Label conventions per task, applied when ground truth is loaded.

Why here: every dataset stores its labels differently (LiTS/MSD Task03 use
0/1/2, MSD Task06 uses 0/1 for lung tumour, 3D-IRCADb/CHAOS give liver only,
TotalSegmentator-style data uses dozens of organ values). Training, caching
and evaluation all go through :func:`apply_mapping`, so a value nobody
expected is an error naming the file and the values, never silently kept.

Our output label values (the bundle's ``labels``) are:
  liver_tumor: 0 background, 1 liver, 2 liver tumour
  liver:       0 background, 1 liver (source tumour 2 is merged into liver)
  lung_tumor:  0 background, 1 lung tumour
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from LiverCTSegmentationLib.engine.errors import LiverSegError

# --------------------------------------------------------------- constants
# Shared label descriptions (colour 0..255 + SNOMED CT terminology) used by
# export.py to write model.json. Values follow docs/ARCHITECTURE.md.
LIVER = {
    "value": 1,
    "name": "Liver",
    "color": [221, 130, 101],
    "terminology": {
        "category": ["SCT", "123037004", "Anatomical Structure"],
        "type": ["SCT", "10200004", "Liver"],
    },
}
LIVER_TUMOR = {
    "value": 2,
    "name": "Liver tumor",
    "color": [144, 238, 144],
    "terminology": {
        "category": ["SCT", "49755003", "Morphologically Altered Structure"],
        "type": ["SCT", "108369006", "Neoplasm"],
        "region": ["SCT", "10200004", "Liver"],
    },
}
LUNG_TUMOR = {
    "value": 1,
    "name": "Lung tumor",
    "color": [144, 238, 144],
    "terminology": {
        "category": ["SCT", "49755003", "Morphologically Altered Structure"],
        "type": ["SCT", "108369006", "Neoplasm"],
        "region": ["SCT", "39607008", "Lung"],
    },
}

#: Output labels (model.json ``labels``) per task.
TASK_LABELS: dict[str, list[dict[str, Any]]] = {
    "liver_tumor": [LIVER, LIVER_TUMOR],
    "liver": [LIVER],
    "lung_tumor": [LUNG_TUMOR],
}

#: Source value -> our value, per task. Background (0) always maps to 0.
TASK_MAPPINGS: dict[str, dict[int, int]] = {
    "liver_tumor": {0: 0, 1: 1, 2: 2},
    "liver": {0: 0, 1: 1, 2: 1},
    "lung_tumor": {0: 0, 1: 1},
}

#: Evaluation classes per task: class name -> our label values forming it.
#: "liver" is the organ (liver + tumour), as in the LiTS challenge.
TASK_CLASSES: dict[str, dict[str, tuple[int, ...]]] = {
    "liver_tumor": {"liver": (1, 2), "tumor": (2,)},
    "liver": {"liver": (1,)},
    "lung_tumor": {"tumor": (1,)},
}

#: Which of our label values counts as "tumour" (for oversampling/detection).
TASK_TUMOR_LABEL: dict[str, int | None] = {"liver_tumor": 2, "liver": None, "lung_tumor": 1}


class LabelError(LiverSegError, ValueError):
    """Ground truth holds values the task's mapping does not know (one-line CLI error)."""

    code = "label"


def check_task(task: str) -> str:
    if task not in TASK_MAPPINGS:
        raise LabelError(f"unknown task {task!r}; expected one of {sorted(TASK_MAPPINGS)}")
    return task


def mapping_for(task: str, override: Mapping[Any, Any] | None = None) -> dict[int, int]:
    """The source->target mapping for ``task``; ``override`` (e.g. the config's
    ``data.label_mapping``) replaces it entirely (keys/values may be strings from YAML)."""
    check_task(task)
    if override:
        m = {int(k): int(v) for k, v in override.items()}
        m.setdefault(0, 0)
        return m
    return dict(TASK_MAPPINGS[task])


def apply_mapping(array: np.ndarray, mapping: Mapping[int, int], source: str = "<array>") -> np.ndarray:
    """Map label values through ``mapping`` with a lookup table -> uint8.

    Raises :class:`LabelError` naming ``source`` and the unexpected values if the
    array holds a value that is not a key of ``mapping`` (including non-integer
    or negative values).
    """
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            bad = np.unique(arr[~np.isfinite(arr) | (arr != np.round(arr))])[:10]
            raise LabelError(f"{source}: label image has non-integer values {bad.tolist()}; expected {sorted(mapping)}")
        arr = arr.astype(np.int64)
    values = np.unique(arr)
    unexpected = [int(v) for v in values if int(v) not in mapping]
    if unexpected:
        raise LabelError(
            f"{source}: unexpected label values {unexpected[:20]} (expected only {sorted(mapping)}). "
            "Check the dataset kind/task in the config or set data.label_mapping explicitly."
        )
    lut = np.zeros(int(values.max()) + 1 if values.size else 1, dtype=np.uint8)
    for k, v in mapping.items():
        if 0 <= k < lut.size:
            lut[k] = v
    return lut[arr]


# --------------------------------------------------------------- multi-organ
#: Organs kept as explicit *negative* classes (liver look-alikes) for later use.
DEFAULT_NEGATIVES: tuple[str, ...] = (
    "spleen",
    "kidney_left",
    "kidney_right",
    "stomach",
    "gallbladder",
    "pancreas",
    "duodenum",
    "small_bowel",
    "colon",
    "aorta",
    "inferior_vena_cava",
    "heart",
)


def load_class_names(classes: str | Path | Mapping[Any, Any]) -> dict[int, str]:
    """Read a TotalSegmentator-style classes map: ``{"1": "spleen", ...}`` or
    ``{"spleen": 1, ...}`` (a dict or a JSON file) -> {value: name}."""
    if not isinstance(classes, Mapping):
        classes = json.loads(Path(classes).read_text(encoding="utf-8"))
    out: dict[int, str] = {}
    for k, v in classes.items():
        if isinstance(v, (int, np.integer)) or (isinstance(v, str) and v.isdigit() and not str(k).isdigit()):
            out[int(v)] = str(k)
        else:
            out[int(k)] = str(v)
    return out


def multiorgan_mapping(
    classes: str | Path | Mapping[Any, Any],
    liver_names: tuple[str, ...] = ("liver",),
    tumor_names: tuple[str, ...] = ("liver_tumor", "liver_tumour", "liver_lesion"),
    negatives: tuple[str, ...] = DEFAULT_NEGATIVES,
    negatives_as_background: bool = False,
) -> tuple[dict[int, int], dict[int, str]]:
    """Map a multi-organ label map to our labels with explicit negative classes.

    Returns ``(mapping, names)``: liver -> 1, liver tumour -> 2, each negative
    organ present in ``classes`` -> its own value 3, 4, ... (in the order of
    ``negatives``; both kidneys share one "kidney" value) unless
    ``negatives_as_background``; every other source value -> 0. The mapping
    covers every value of the classes map, so :func:`apply_mapping` still
    rejects values that are not in it.
    """
    if not isinstance(classes, Mapping):
        classes = json.loads(Path(classes).read_text(encoding="utf-8"))
    if "target" in classes and "classes" in classes:
        return anatomy_mapping(classes)
    src = load_class_names(classes)
    by_name = {n.lower(): v for v, n in src.items()}
    mapping: dict[int, int] = {0: 0}
    names: dict[int, str] = {0: "background", 1: "liver", 2: "liver_tumor"}
    for v in src:
        mapping[v] = 0
    for n in liver_names:
        if n in by_name:
            mapping[by_name[n]] = 1
    for n in tumor_names:
        if n in by_name:
            mapping[by_name[n]] = 2
    if not negatives_as_background:
        next_value = 3
        group_value: dict[str, int] = {}
        for n in negatives:
            if n not in by_name:
                continue
            group = "kidney" if n.startswith("kidney") else n
            if group not in group_value:
                group_value[group] = next_value
                names[next_value] = group
                next_value += 1
            mapping[by_name[n]] = group_value[group]
    return mapping, names


def anatomy_mapping(table: Mapping[str, Any]) -> tuple[dict[int, int], dict[int, str]]:
    """Map an anatomy label map (``{"classes": {value: name}, "target": {"liver": [...],
    "liver_tumor": [...]}}``, ../shared/data/anatomy) to our labels: the target's liver values
    -> 1 (vessels and cysts inside the liver count as liver), its tumour values -> 2, every other
    class but value 0 -> its own organ value 3, 4, ... (a negative the augmentation re-shades)."""
    classes = {int(k): str(v) for k, v in table["classes"].items()}
    liver = {int(v) for v in table["target"].get("liver", [])}
    tumor = {int(v) for v in table["target"].get("liver_tumor", [])}
    mapping: dict[int, int] = {v: 0 for v in classes}
    names: dict[int, str] = {0: "background", 1: "liver", 2: "liver_tumor"}
    next_value = 3
    for v in sorted(classes):
        if v in liver:
            mapping[v] = 1
        elif v in tumor:
            mapping[v] = 2
        elif v != 0:
            mapping[v], names[next_value] = next_value, classes[v]
            next_value += 1
    mapping[0] = 0
    return mapping, names
