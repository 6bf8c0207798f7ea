"""DICOM Segmentation (SEG) output for a labelmap segmented from a DICOM CT series, with highdicom.

The SEG references every source slice (study, series and SOP instance UIDs, frame of reference),
has new UIDs of its own, copies the source's patient and study attributes (highdicom takes them
from the source datasets; nothing is invented) and one segment per bundle label with the same
SNOMED-CT codes the .seg.nrrd carries. Frames are cut from the labelmap along each source slice's
own position and orientation, so the SEG is right whatever the series' orientation.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic_write import atomic_write
from .errors import InputError, OutputError
from .volume import Volume

MANUFACTURER = "LiverCTSegmentation"
MODEL_NAME = "liverseg"
# Largest distance (in voxels) between a source pixel centre and the labelmap voxel it maps to:
# DICOM stores positions as decimal strings, so the grids agree to rounding, not exactly.
GRID_TOL_VOXELS = 0.1
# Type 2 patient/study attributes highdicom copies from the source: a source without one (allowed for
# some, e.g. a synthetic series) gets it empty, which DICOM reads as "unknown"; a value is never made up.
TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                "StudyDate", "StudyTime", "ReferringPhysicianName")


def series_files(vol: Volume) -> list[Path]:
    """The DICOM files of the series ``vol`` was read from (``engine.dicom.read_dicom_series``)."""
    import SimpleITK as sitk

    from .itk_quiet import quiet_itk

    folder, sid = vol.metadata.get("dicom_folder"), vol.metadata.get("dicom_series_id")
    if not folder or not sid:
        raise InputError("This image was not read from a DICOM series, so no DICOM SEG can reference it. "
                         "Give the DICOM series folder as input.")
    with quiet_itk():
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), str(sid))
    if not names:
        raise InputError(f"The DICOM series {sid} is no longer in '{folder}'. Restore it and rerun.")
    return [Path(n) for n in names]


def read_source_headers(files: Sequence[str | os.PathLike]) -> list[Any]:
    """pydicom datasets of the source slices, without pixel data (the SEG needs headers only)."""
    import pydicom

    try:
        headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    except Exception as e:  # pydicom raises several types on broken files
        raise InputError(f"A source DICOM file cannot be read for the SEG ({e}). Re-export the series.") from e
    for ds in headers:
        for name in TYPE2_COPIED:
            if name not in ds:
                setattr(ds, name, None)
    return headers


def _frame(arr: np.ndarray, labelmap: Volume, ds: Any) -> np.ndarray:
    """The labelmap's pixels of source slice ``ds`` as a (rows, cols) frame."""
    iop = np.array([float(x) for x in ds.ImageOrientationPatient])
    ipp = np.array([float(x) for x in ds.ImagePositionPatient])
    row_mm, col_mm = (float(x) for x in ds.PixelSpacing)  # between rows, between columns
    to_ijk = np.linalg.inv(labelmap.direction @ np.diag(labelmap.spacing))
    start = to_ijk @ (ipp - np.asarray(labelmap.origin))
    steps = np.stack([to_ijk @ (iop[3:] * row_mm), to_ijk @ (iop[:3] * col_mm)])  # one row down, one column right
    rows, cols = int(ds.Rows), int(ds.Columns)
    # Integer steps and start within GRID_TOL_VOXELS at every pixel (the error is linear in row and column).
    off = np.abs(start - np.rint(start)) + np.abs(steps - np.rint(steps)).T @ np.array([rows - 1, cols - 1])
    if off.max() > GRID_TOL_VOXELS:
        raise OutputError(
            f"The labelmap is not on the grid of DICOM slice {ds.SOPInstanceUID} (off by up to {off.max():.2f} "
            "voxel), so no DICOM SEG can reference it. Segment the DICOM series itself.")
    start, steps = np.rint(start).astype(np.int64), np.rint(steps).astype(np.int64)
    ends = start + steps.T @ np.array([rows - 1, cols - 1])
    lo, hi = np.minimum(start, ends), np.maximum(start, ends)
    if lo.min() < 0 or np.any(hi >= np.array(labelmap.size_ijk)):
        raise OutputError(f"DICOM slice {ds.SOPInstanceUID} lies outside the labelmap, so no DICOM SEG can "
                          "reference it. Segment the whole DICOM series.")
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    # Index arrays broadcast from (rows, 1) and (1, cols); arr is indexed [k, j, i].
    i, j, k = (start[a] + r * steps[0, a] + c * steps[1, a] for a in range(3))
    return arr[k, j, i]


def _frames(labelmap: Volume, headers: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(labelmap.array)
    return np.stack([_frame(arr, labelmap, ds) for ds in headers])


def _code(triple: Sequence[str]):
    from highdicom.sr import CodedConcept

    scheme, value, meaning = (str(x) for x in triple)
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def segment_descriptions(labels: Sequence[dict], model_name: str, model_version: str) -> list:
    """One highdicom SegmentDescription per bundle label (numbered 1..n in label-value order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name, version=model_version, family=codes.cid7162.ArtificialIntelligence, source=MANUFACTURER)
    out = []
    for n, lab in enumerate(sorted(labels, key=lambda x: int(x["value"])), start=1):
        term = lab.get("terminology") or {}
        category = term.get("category") or ["SCT", "85756007", "Tissue"]
        typ = term.get("type") or ["SCT", "85756007", "Tissue"]
        color = lab.get("color")
        out.append(hd.seg.SegmentDescription(
            segment_number=n, segment_label=str(lab["name"]),
            segmented_property_category=_code(category), segmented_property_type=_code(typ),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[_code(term["region"])] if term.get("region") else None,
            tracking_id=str(lab["name"]), tracking_uid=hd.UID(),
            display_color=hd.color.CIELabColor.from_rgb(*[int(x) for x in color]) if color else None,
        ))
    return out


def build_dicom_seg(labelmap: Volume, source_files: Sequence[str | os.PathLike], labels: Sequence[dict],
                    model_name: str, model_version: str, software_version: str = "") -> Any:
    """The highdicom Segmentation of ``labelmap`` (label values of ``labels``) over ``source_files``."""
    import highdicom as hd

    if not source_files:
        raise InputError("No source DICOM files given for the SEG. Give the DICOM series the labelmap came from.")
    if not software_version:
        from .. import __version__ as software_version
    headers = read_source_headers(source_files)
    frames = _frames(labelmap, headers)
    values = sorted(int(lab["value"]) for lab in labels)
    lut = np.zeros(256, dtype=np.uint8)  # label value -> segment number; unknown values -> background
    lut[values] = np.arange(1, len(values) + 1, dtype=np.uint8)
    segments = lut[frames.astype(np.uint8, copy=False)]
    with warnings.catch_warnings():
        # highdicom checks the source's PatientName, which is copied as it is: not this SEG's to fix.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(hd, headers, segments, labels, model_name, model_version, software_version)
    seg.ContentCreatorName = None  # Type 2: an algorithm made it, not a person
    return seg


def _segmentation(hd: Any, headers: Sequence[Any], segments: np.ndarray, labels: Sequence[dict], model_name: str,
                  model_version: str, software_version: str) -> Any:
    return hd.seg.Segmentation(
        source_images=headers, pixel_array=segments, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(labels, model_name, model_version),
        series_instance_uid=hd.UID(), series_number=int(getattr(headers[0], "SeriesNumber", 0) or 0) + 900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME, software_versions=f"{MODEL_NAME} {software_version}",
        device_serial_number=f"{model_name} {model_version}"[:64], content_label="LIVERSEG",
        content_description=f"Liver and liver tumour, {model_name} {model_version}"[:64],
        series_description=f"Liver segmentation ({model_name} {model_version})"[:64],
        omit_empty_frames=True,
    )


def write_dicom_seg(labelmap: Volume, source_files: Sequence[str | os.PathLike], labels: Sequence[dict],
                    path: str | os.PathLike, model_name: str, model_version: str, overwrite: bool = False) -> Any:
    """Build the SEG (``build_dicom_seg``) and write it atomically to ``path``; returns the dataset."""
    seg = build_dicom_seg(labelmap, source_files, labels, model_name, model_version)
    atomic_write(path, lambda tmp: seg.save_as(str(tmp)), overwrite=overwrite)
    return seg
