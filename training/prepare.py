"""``prepare``: DICOM datasets with slice-wise masks -> NIfTI image/label pairs.

Output layout is the ``generic`` one (``OUT/images/<case>.nii.gz`` +
``OUT/labels/<case>.nii.gz`` + ``OUT/prepare_manifest.json``), readable with
``data.kind: generic``. The CT is read with the engine's
``read_dicom_series`` (same reader as the module), and every label volume is
built on **the CT's exact grid** (it is ``ct.with_array(mask)``): masks never
bring their own geometry.

Where each mask slice goes (the slice order problem)
---------------------------------------------------
- 3D-IRCADb (``PATIENT_DICOM/`` + ``MASKS_DICOM/<structure>/``): every mask
  slice is a DICOM file with ImagePositionPatient. Its CT slice index is
  ``k = round(((IPP - origin) · n) / spacing_k)`` where ``origin``, ``n`` (the
  k-axis direction) and ``spacing_k`` come from the CT Volume as read, so it
  does not matter how the files are named or in which order GDCM sorted them.
  A slice that falls between CT slices, outside the CT, or whose in-plane
  origin/orientation/size differs from the CT is an error. Mask slices without
  ImagePositionPatient fall back to InstanceNumber matching (below).
- CHAOS CT (``DICOM_anon/`` + ``Ground/``): the masks are PNG files without
  geometry, one per DICOM slice. PNG files are sorted by the numbers in their
  names (natural order: ``liver_GT_000.png``, ``..._001``); the DICOM files
  are sorted by InstanceNumber (``png_order="instance"``, default; CHAOS
  numbers PNGs in instance order) or by position along the slice normal
  (``png_order="position"``); the p-th PNG belongs to the p-th DICOM file, and
  that file's own ImagePositionPatient gives its k in the volume as above.
  PNG rows/columns are the DICOM rows (j) / columns (i). Some CHAOS releases
  store the PNGs upside down relative to the DICOM rows: ``flip="vertical"``
  flips every PNG's rows (``"horizontal"`` columns, ``"both"``) before use.
  The flip is never guessed; ``prepare`` prints the mean CT HU inside the
  mask for each choice as a hint (liver is ~40-160 HU).
- Mask pixel values: any value > 0 is foreground (IRCADb uses 255).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from LiverCTSegmentationLib.engine.errors import LiverSegError

FLIPS = ("none", "vertical", "horizontal", "both")
#: IRCADb MASKS_DICOM sub-folder patterns -> our label (later entries win).
IRCADB_LIVER = {"liver": 1}
IRCADB_LIVER_TUMOR = {"liver": 1, "livertumor*": 2, "livertumors": 2}


class PrepareError(LiverSegError, ValueError):
    """The input folder does not look like the expected dataset or is inconsistent (one-line CLI error)."""

    code = "prepare"


@dataclass
class SliceInfo:
    path: Path
    instance: int | None
    ipp: np.ndarray | None
    iop: np.ndarray | None
    rows: int
    cols: int


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _read_header(path: Path, pixels: bool = False):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=not pixels, force=True)
    except Exception:  # not DICOM (README, DICOMDIR, thumbnails...)
        return None


def _slice_info(path: Path, ds: Any) -> SliceInfo | None:
    if ds is None or not hasattr(ds, "Rows"):
        return None
    ipp = getattr(ds, "ImagePositionPatient", None)
    iop = getattr(ds, "ImageOrientationPatient", None)
    inst = getattr(ds, "InstanceNumber", None)
    return SliceInfo(path, int(inst) if inst not in (None, "") else None,
                     np.asarray([float(v) for v in ipp]) if ipp is not None else None,
                     np.asarray([float(v) for v in iop]) if iop is not None else None,
                     int(ds.Rows), int(ds.Columns))


def dicom_slices(folder: Path) -> list[SliceInfo]:
    out = []
    for p in sorted((x for x in Path(folder).rglob("*") if x.is_file()), key=lambda x: _natural_key(str(x))):
        info = _slice_info(p, _read_header(p))
        if info is not None:
            out.append(info)
    return out


def slice_index(ct, info: SliceInfo, tol: float = 0.25) -> int:
    """CT k index of a slice from its ImagePositionPatient (see module docstring)."""
    d = np.asarray(ct.direction)
    sx, sy, sz = ct.spacing
    rel = info.ipp - np.asarray(ct.origin)
    kf = float(rel @ d[:, 2]) / sz
    k = int(round(kf))
    nk, nj, ni = ct.array.shape
    if abs(kf - k) > tol or not 0 <= k < nk:
        raise PrepareError(f"{info.path}: slice position {info.ipp.tolist()} is not on a CT slice "
                           f"(k = {kf:.2f} of 0..{nk - 1})")
    inplane = np.abs([rel @ d[:, 0], rel @ d[:, 1]])
    if np.any(inplane > 0.5 * min(sx, sy)):
        raise PrepareError(f"{info.path}: in-plane origin differs from the CT's by {inplane.tolist()} mm")
    if info.iop is not None and not np.allclose(info.iop, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-3):
        raise PrepareError(f"{info.path}: ImageOrientationPatient {info.iop.tolist()} differs from the CT's")
    if (info.rows, info.cols) != (nj, ni):
        raise PrepareError(f"{info.path}: {info.rows}x{info.cols} pixels but the CT slices are {nj}x{ni}")
    return k


def ct_slice_order(ct_folder: Path, ct, order: str = "instance") -> list[tuple[SliceInfo, int]]:
    """CT DICOM files in mask order with each file's k index."""
    infos = [i for i in dicom_slices(ct_folder) if i.ipp is not None]
    if len(infos) != ct.array.shape[0]:
        raise PrepareError(f"{ct_folder}: {len(infos)} DICOM slices with positions but the CT has "
                           f"{ct.array.shape[0]} slices (several series in one folder?)")
    if order == "instance":
        if any(i.instance is None for i in infos):
            raise PrepareError(f"{ct_folder}: InstanceNumber missing; use png_order='position'")
        infos.sort(key=lambda i: i.instance)
    elif order == "position":
        n = np.asarray(ct.direction)[:, 2]
        infos.sort(key=lambda i: float(i.ipp @ n))
    else:
        raise PrepareError(f"unknown slice order {order!r}: use 'instance' or 'position'")
    return [(i, slice_index(ct, i)) for i in infos]


def _flip(a: np.ndarray, flip: str) -> np.ndarray:
    if flip not in FLIPS:
        raise PrepareError(f"unknown flip {flip!r}; use one of {FLIPS}")
    if flip in ("vertical", "both"):
        a = a[::-1, :]
    if flip in ("horizontal", "both"):
        a = a[:, ::-1]
    return a


def _read_png(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if arr.ndim == 3:  # RGB(A) PNG -> any channel non-zero
        arr = arr.max(axis=-1)
    return arr


# ------------------------------------------------------------------ IRCADb
def _materialise(path: Path, tmp: Path) -> Path:
    """A folder, or the same name + '.zip' extracted (safely) into ``tmp``."""
    if path.is_dir():
        return path
    z = path.with_name(path.name + ".zip")
    if not z.is_file():
        raise PrepareError(f"{path} not found (nor {z.name})")
    with zipfile.ZipFile(z) as zf:
        for m in zf.infolist():
            name = Path(m.filename)
            if name.is_absolute() or ".." in name.parts:
                raise PrepareError(f"{z}: unsafe member {m.filename!r}")
        zf.extractall(tmp / path.name)
    inner = tmp / path.name / path.name
    return inner if inner.is_dir() else tmp / path.name


def read_ircadb_patient(patient_dir: str | Path, structures: dict[str, int] | None = None):
    """(ct Volume, label Volume on the CT grid) for one 3D-IRCADb patient folder."""
    from LiverCTSegmentationLib.engine.dicom import read_dicom_series

    structures = structures or IRCADB_LIVER
    pdir = Path(patient_dir)
    with tempfile.TemporaryDirectory(prefix="ircadb-") as td:
        ct_dir = _materialise(pdir / "PATIENT_DICOM", Path(td))
        masks_dir = _materialise(pdir / "MASKS_DICOM", Path(td))
        ct = read_dicom_series(ct_dir)
        ct_order = None
        label = np.zeros(ct.array.shape, dtype=np.uint8)
        found = []
        for pattern, value in structures.items():
            for sdir in sorted((d for d in masks_dir.iterdir() if d.is_dir()), key=lambda d: _natural_key(d.name)):
                if not fnmatch.fnmatch(sdir.name.lower(), pattern.lower()):
                    continue
                found.append(sdir.name)
                infos = dicom_slices(sdir)
                if not infos:
                    raise PrepareError(f"{sdir}: no DICOM mask slices")
                if any(i.ipp is None for i in infos):  # fall back to instance order
                    ct_order = ct_order or ct_slice_order(ct_dir, ct, "instance")
                    infos.sort(key=lambda i: (i.instance if i.instance is not None else 0, _natural_key(i.path.name)))
                    if len(infos) != len(ct_order):
                        raise PrepareError(f"{sdir}: {len(infos)} mask slices for {len(ct_order)} CT slices")
                    ks = [k for _, k in ct_order]
                else:
                    ks = [slice_index(ct, i) for i in infos]
                for info, k in zip(infos, ks):
                    ds = _read_header(info.path, pixels=True)
                    m = np.asarray(ds.pixel_array) > 0
                    if m.shape != ct.array.shape[1:]:
                        raise PrepareError(f"{info.path}: mask {m.shape} != CT slice {ct.array.shape[1:]}")
                    label[k][m] = value
        if "liver" in structures and "liver" not in [f.lower() for f in found]:
            raise PrepareError(f"{masks_dir}: no 'liver' mask folder")
    return ct, ct.with_array(label)


# ------------------------------------------------------------------ CHAOS
def read_chaos_patient(patient_dir: str | Path, flip: str = "none", png_order: str = "instance",
                       label_value: int = 1):
    """(ct Volume, label Volume on the CT grid) for one CHAOS CT patient folder."""
    from LiverCTSegmentationLib.engine.dicom import read_dicom_series

    pdir = Path(patient_dir)
    ct_dir, gdir = pdir / "DICOM_anon", pdir / "Ground"
    if not ct_dir.is_dir() or not gdir.is_dir():
        raise PrepareError(f"{pdir}: expected DICOM_anon/ and Ground/ (CHAOS CT layout)")
    ct = read_dicom_series(ct_dir)
    order = ct_slice_order(ct_dir, ct, png_order)
    pngs = sorted((p for p in gdir.iterdir() if p.suffix.lower() == ".png"), key=lambda p: _natural_key(p.name))
    if len(pngs) != len(order):
        raise PrepareError(f"{gdir}: {len(pngs)} PNG masks for {len(order)} DICOM slices; they must pair one to one")
    label = np.zeros(ct.array.shape, dtype=np.uint8)
    for png, (info, k) in zip(pngs, order):
        m = _flip(_read_png(png), flip) > 0
        if m.shape != ct.array.shape[1:]:
            raise PrepareError(f"{png}: {m.shape} pixels but the CT slices are {ct.array.shape[1:]}")
        label[k][m] = label_value
    return ct, ct.with_array(label)


def flip_hint(ct, label) -> dict[str, float]:
    """Mean CT value inside the mask with and without a vertical flip (per slice rows).

    A correctly aligned liver mask gives liver HU (~40-160); a flipped one
    usually lands on fat/air/bone and gives a very different mean.
    """
    m = label.array > 0
    if not m.any():
        return {}
    a = np.asarray(ct.array, dtype=np.float32)
    return {"as_is": float(a[m].mean()), "vertical_flip": float(a[m[:, ::-1, :]].mean())}


# ------------------------------------------------------------------ command
def find_patients(root: Path, fmt: str) -> list[Path]:
    marker = "PATIENT_DICOM" if fmt == "ircadb" else "DICOM_anon"

    def has(d: Path) -> bool:
        return (d / marker).is_dir() or (d / f"{marker}.zip").is_file()

    if has(root):
        return [root]
    found = []
    for d in sorted(root.rglob("*"), key=lambda p: _natural_key(str(p))):
        if d.is_dir() and has(d) and len(d.relative_to(root).parts) <= 3:
            found.append(d)
    return found


def prepare(input_root: str | Path, output: str | Path, fmt: str, flip: str = "none", png_order: str = "instance",
            with_tumors: bool = False, overwrite: bool = False, log=print) -> list[dict[str, Any]]:
    from LiverCTSegmentationLib.engine.io import write_volume

    from .cache import sha256_file

    root, out = Path(input_root), Path(output)
    if fmt not in ("ircadb", "chaos"):
        raise PrepareError(f"unknown format {fmt!r}: use ircadb or chaos")
    patients = find_patients(root, fmt)
    if not patients:
        raise PrepareError(f"no {fmt} patient folders under {root}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    for pdir in patients:
        cid = f"{fmt}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', pdir.name)}"
        img_p, lab_p = out / "images" / f"{cid}.nii.gz", out / "labels" / f"{cid}.nii.gz"
        if img_p.exists() and lab_p.exists() and not overwrite:
            log(f"{cid}: exists, skipped (use --overwrite)")
            rows.append({"case_id": cid, "source": str(pdir), "status": "skipped"})
            continue
        try:
            if fmt == "ircadb":
                ct, lab = read_ircadb_patient(pdir, IRCADB_LIVER_TUMOR if with_tumors else IRCADB_LIVER)
            else:
                ct, lab = read_chaos_patient(pdir, flip=flip, png_order=png_order)
                hint = flip_hint(ct, lab)
                if hint:
                    log(f"{cid}: mean HU inside mask as used {hint['as_is']:.0f}, "
                        f"with rows flipped {hint['vertical_flip']:.0f} (liver ~40-160)")
        except Exception as e:  # report and continue with the other patients
            log(f"{cid}: FAILED: {e}")
            rows.append({"case_id": cid, "source": str(pdir), "status": "failed", "error": str(e)})
            continue
        write_volume(ct, img_p, overwrite=True)
        write_volume(lab, lab_p, overwrite=True)
        rows.append({"case_id": cid, "source": str(pdir), "status": "ok", "image": str(img_p), "label": str(lab_p),
                     "image_sha256": sha256_file(img_p), "label_sha256": sha256_file(lab_p),
                     "shape_kji": list(ct.array.shape), "spacing": list(ct.spacing),
                     "label_voxels": int(np.count_nonzero(lab.array))})
        log(f"{cid}: ok {ct.array.shape} spacing {tuple(round(s, 3) for s in ct.spacing)}")
    manifest = {"format": fmt, "input": str(root), "flip": flip, "png_order": png_order,
                "with_tumors": with_tumors, "cases": rows}
    (out / "prepare_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return rows


def main_prepare(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="liverseg-train prepare",
                                 description="Convert 3D-IRCADb / CHAOS DICOM + masks to NIfTI pairs "
                                             "(OUT/images, OUT/labels; use data.kind=generic).")
    ap.add_argument("--format", required=True, choices=["ircadb", "chaos"])
    ap.add_argument("--input", required=True, help="dataset root or one patient folder")
    ap.add_argument("--output", required=True)
    ap.add_argument("--flip-png", default="none", choices=FLIPS,
                    help="CHAOS: flip PNG masks before use (some releases store them upside down)")
    ap.add_argument("--png-order", default="instance", choices=["instance", "position"],
                    help="CHAOS: pair the n-th PNG with the n-th DICOM by InstanceNumber or by position")
    ap.add_argument("--with-tumors", action="store_true", help="IRCADb: add livertumor* masks as label 2")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    try:
        rows = prepare(a.input, a.output, a.format, a.flip_png, a.png_order, a.with_tumors, a.overwrite)
    except PrepareError as e:
        print(f"error: {e}")
        return 2
    failed = [r for r in rows if r["status"] == "failed"]
    print(f"{len(rows) - len(failed)} ok/skipped, {len(failed)} failed -> {a.output}")
    return 1 if failed else 0


__all__ = ["main_prepare", "prepare", "read_ircadb_patient", "read_chaos_patient", "PrepareError"]
