"""Dataset readers: turn a folder in a known public layout into a sorted case list.

Every reader returns ``list[Case]`` sorted by ``case_id`` so that splits and
caches do not depend on directory listing order. Files are not opened here
(cheap); labels are mapped through :mod:`liverct_training.labels` when loaded
(:func:`load_case`).

Layouts:
- ``lits``: ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` anywhere under
  root (the official release splits them over "Training Batch 1/2").
- ``msd``: Medical Segmentation Decathlon task folder with ``dataset.json``
  (``"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``).
- ``generic`` (alias ``folder``): ``images/`` + ``labels/`` matched by file stem
  (``case.nii.gz`` <-> ``case.nii.gz``; a label may also be ``case_seg``/``case_label``).
  This is also what ``prepare`` writes for 3D-IRCADb/CHAOS.
- ``list`` (alias ``pairs``): an explicit list in the config,
  ``data.pairs: [{image: a.nii.gz, label: b.nii.gz, case_id: x, patient_id: p}]``
  or ``"image:label"`` strings.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from LiverCTSegmentationLib.engine.errors import LiverSegError

VOLUME_EXTS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class DatasetError(LiverSegError, ValueError):
    """The dataset folder does not match the expected layout.

    A LiverSegError so ``liverseg-train`` prints one line, not a traceback; still a ValueError for callers.
    """

    code = "dataset"


@dataclass(frozen=True, order=True)
class Case:
    case_id: str
    patient_id: str
    image_path: str
    label_path: str | None
    #: A TotalSegmentator-style classes JSON: the label is a multi-organ map, read with
    #: labels.multiorgan_mapping (liver 1, tumour 2, neighbouring organs 3.., the rest 0).
    label_classes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"case_id": self.case_id, "patient_id": self.patient_id,
             "image": self.image_path, "label": self.label_path}
        if self.label_classes:
            d["label_classes"] = self.label_classes
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Case":
        return cls(str(d["case_id"]), str(d.get("patient_id") or d["case_id"]),
                   str(d["image"]), None if d.get("label") is None else str(d["label"]),
                   str(d["label_classes"]) if d.get("label_classes") else None)


def stem(path: str | Path) -> str:
    """File name without a volume extension (``a.nii.gz`` -> ``a``)."""
    name = Path(path).name
    for ext in VOLUME_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _is_volume(p: Path) -> bool:
    return p.is_file() and any(p.name.lower().endswith(e) for e in VOLUME_EXTS) and not p.name.startswith(".")


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _sorted(cases: Iterable[Case]) -> list[Case]:
    cases = list(cases)
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DatasetError(f"duplicate case ids {dup[:10]}: case ids must be unique")
    return sorted(cases, key=lambda c: _natural_key(c.case_id))


def _root(root: str | Path) -> Path:
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DatasetError(f"dataset root {r} does not exist or is not a folder; set data.root")
    return r


# ------------------------------------------------------------------ readers
def read_lits(root: str | Path, require_labels: bool = True) -> list[Case]:
    r = _root(root)
    vols: dict[int, Path] = {}
    segs: dict[int, Path] = {}
    for p in r.rglob("*"):
        m = re.fullmatch(r"(volume|segmentation)-(\d+)\.nii(\.gz)?", p.name)
        if not m or not p.is_file():
            continue
        target = vols if m.group(1) == "volume" else segs
        n = int(m.group(2))
        if n in target:
            raise DatasetError(f"LiTS case {n} found twice: {target[n]} and {p}")
        target[n] = p
    if not vols:
        raise DatasetError(f"no LiTS volume-N.nii files under {r}")
    missing = sorted(set(vols) - set(segs))
    if missing and require_labels:
        raise DatasetError(f"LiTS volumes without segmentation-N.nii under {r}: {missing[:20]}")
    return _sorted(
        Case(f"lits-{n:03d}", f"lits-{n:03d}", str(p), str(segs[n]) if n in segs else None) for n, p in vols.items()
    )


def read_msd(root: str | Path, require_labels: bool = True) -> list[Case]:
    r = _root(root)
    dj = r / "dataset.json"
    if not dj.is_file():
        raise DatasetError(f"{dj} not found: an MSD task folder has dataset.json, imagesTr/, labelsTr/")
    try:
        meta = json.loads(dj.read_text(encoding="utf-8"))
        entries = meta["training"]
    except (ValueError, KeyError) as e:
        raise DatasetError(f"{dj}: cannot read the 'training' list ({e})") from e
    cases = []
    for e in entries:
        img = (r / e["image"]).resolve()
        lab = (r / e["label"]).resolve() if e.get("label") else None
        if not img.is_file():
            raise DatasetError(f"{dj} lists {e['image']} but {img} does not exist")
        if lab is not None and not lab.is_file():
            if require_labels:
                raise DatasetError(f"{dj} lists {e['label']} but {lab} does not exist")
            lab = None
        if lab is None and require_labels:
            raise DatasetError(f"{dj}: training entry {e['image']} has no label")
        cid = stem(img)
        cases.append(Case(cid, cid, str(img), str(lab) if lab else None))
    if not cases:
        raise DatasetError(f"{dj} has an empty training list")
    return _sorted(cases)


def read_generic(
    root: str | Path,
    images: str = "images",
    labels: str = "labels",
    require_labels: bool = True,
    patient_regex: str | None = None,
) -> list[Case]:
    """``root/images/<stem>.*`` + ``root/labels/<stem>[_seg|_label|_mask].*``.

    ``patient_regex``: optional regex whose first group, applied to the case id,
    gives the patient id (several scans of one patient then stay in one split).
    """
    r = _root(root)
    idir, ldir = r / images, r / labels
    if not idir.is_dir():
        raise DatasetError(f"{idir} not found: the generic layout is {images}/ + {labels}/ under the root")
    lab_by_stem: dict[str, Path] = {}
    if ldir.is_dir():
        for p in ldir.iterdir():
            if _is_volume(p):
                s = stem(p)
                lab_by_stem[s] = p
                for suf in ("_seg", "_label", "_mask", "_labels"):
                    if s.endswith(suf):
                        lab_by_stem.setdefault(s[: -len(suf)], p)
    cases, missing = [], []
    for p in idir.iterdir():
        if not _is_volume(p):
            continue
        s = stem(p)
        lab = lab_by_stem.get(s)
        if lab is None:
            missing.append(p.name)
        pid = s
        if patient_regex:
            m = re.search(patient_regex, s)
            if not m:
                raise DatasetError(f"patient_regex {patient_regex!r} does not match case {s!r}")
            pid = m.group(1) if m.groups() else m.group(0)
        cases.append(Case(s, pid, str(p), str(lab) if lab else None))
    if missing and require_labels:
        raise DatasetError(f"images without a label of the same name in {ldir}: {sorted(missing)[:20]}")
    if not cases:
        raise DatasetError(f"no volumes ({', '.join(VOLUME_EXTS)}) in {idir}")
    return _sorted(cases)


def read_list(items: Iterable[Any], base: str | Path | None = None) -> list[Case]:
    """Explicit list: dicts ``{image, label, case_id?, patient_id?, label_classes?}`` or ``"image:label"``.

    ``label_classes`` names a classes JSON when the label is a multi-organ map.
    """
    b = Path(base) if base else None
    cases = []
    for it in items:
        if isinstance(it, str):
            if ":" not in it:
                raise DatasetError(f"case {it!r}: expected 'image:label'")
            img, lab = it.rsplit(":", 1)
            it = {"image": img, "label": lab}
        img = Path(it["image"]).expanduser()
        lab = Path(it["label"]).expanduser() if it.get("label") else None
        if b is not None:
            img = img if img.is_absolute() else b / img
            lab = lab if lab is None or lab.is_absolute() else b / lab
        if not img.is_file():
            raise DatasetError(f"image {img} does not exist")
        if lab is not None and not lab.is_file():
            raise DatasetError(f"label {lab} does not exist")
        classes = Path(it["label_classes"]).expanduser() if it.get("label_classes") else None
        if classes is not None and b is not None and not classes.is_absolute():
            classes = b / classes
        if classes is not None and not classes.is_file():
            raise DatasetError(f"label classes file {classes} does not exist")
        cid = str(it.get("case_id") or stem(img))
        cases.append(Case(cid, str(it.get("patient_id") or cid), str(img), str(lab) if lab else None,
                          str(classes) if classes else None))
    return _sorted(cases)


READERS = {"lits": read_lits, "msd": read_msd, "generic": read_generic, "folder": read_generic}


def read_dataset(data: Mapping[str, Any]) -> list[Case]:
    """Cases for a config's ``data`` section (kind lits|msd|generic|folder|list|pairs)."""
    kind = str(data.get("kind", "generic")).lower()
    root = data.get("root")
    if kind in ("list", "pairs", "folder_pairs", "folder pairs"):
        return read_list(data.get("pairs") or data.get("cases") or [], base=root)
    if kind == "phantom":
        raise DatasetError(
            "data.kind 'phantom' has no files to read: phantoms are generated by liverct_training.phantom_data"
        )
    if kind not in READERS:
        raise DatasetError(f"unknown data.kind {kind!r}; expected lits, msd, generic, folder, list or phantom")
    if not root:
        raise DatasetError(f"data.root is not set for data.kind {kind!r}")
    kw: dict[str, Any] = {}
    if kind in ("generic", "folder"):
        for k in ("images", "labels", "patient_regex"):
            if data.get(k):
                kw[k] = data[k]
    return READERS[kind](root, **kw)


# ------------------------------------------------------------------ loading
def case_mapping(case: Case, task: str = "liver_tumor", label_map: Mapping[Any, Any] | None = None) -> dict[int, int]:
    """Source value -> our value for this case: its multi-organ classes if it has them, else the task's."""
    from .labels import mapping_for, multiorgan_mapping

    if case.label_classes:
        mapping, _ = multiorgan_mapping(case.label_classes)
        if task == "liver":  # tumour merges into liver, as in TASK_MAPPINGS["liver"]
            mapping = {k: (1 if v == 2 else v) for k, v in mapping.items()}
        return mapping
    return mapping_for(task, label_map)


def load_case(case: Case, task: str = "liver_tumor", label_map: Mapping[Any, Any] | None = None):
    """Read a case's CT and mapped label as engine Volumes on the CT's grid.

    The label is mapped with the task's mapping (unexpected values -> LabelError
    naming the file). If its header differs from the CT's only by rounding, it
    takes the CT geometry; if it lies on a different grid it is resampled onto
    the CT grid (nearest neighbour, through physical space).
    """
    import numpy as np

    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.engine import preprocess

    from .labels import apply_mapping

    ct = io.read_volume(case.image_path)
    if case.label_path is None:
        return ct, None
    lab = io.read_volume(case.label_path)
    mapped = apply_mapping(lab.array, case_mapping(case, task, label_map), source=case.label_path)
    lab = lab.with_array(mapped)
    if lab.array.shape == ct.array.shape and (
        ct.same_grid(lab, atol=1e-3)
        or (np.allclose(lab.spacing, ct.spacing, rtol=1e-3) and np.allclose(lab.origin, ct.origin, atol=0.5)
            and np.allclose(lab.direction, ct.direction, atol=1e-3))
    ):
        lab = ct.with_array(mapped)
    else:
        lab = preprocess.resample_like(lab, ct)
        lab = ct.with_array(np.asarray(lab.array, dtype=np.uint8))
    return ct, lab
