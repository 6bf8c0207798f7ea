"""DICOM CT series: read (choose a series, verify geometry) and write (for tests, training, demos).

SimpleITK/GDCM reads the voxels and applies RescaleSlope/Intercept; the headers
are checked here with pydicom first because ITK silently builds a wrong volume
from a series with a missing slice or mixed slice geometry.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np

from .dicom_slices import check_in_plane, check_left_out
from .errors import InputError, OutputError
from .itk_quiet import quiet_itk
from .volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_MAX_DEPTH = 3


def _find_series(folder: Path) -> list[tuple[Path, str, list[str]]]:
    """(folder, series id, sorted file names) for each series in folder and a few levels below."""
    import SimpleITK as sitk

    found = []
    base_depth = len(folder.parts)
    with quiet_itk():
        for root, dirs, _files in os.walk(folder):
            if len(Path(root).parts) - base_depth >= _MAX_DEPTH:
                dirs[:] = []
            dirs.sort()
            for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(root) or ():
                names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(root, sid))
                if names:
                    found.append((Path(root), sid, names))
    return found


def _headers(names: list[str]) -> list[Any]:
    import pydicom

    tags = ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
            "Modality", "SeriesInstanceUID", "SeriesDescription", "NumberOfFrames"]
    out = []
    for n in names:
        try:
            out.append(pydicom.dcmread(n, stop_before_pixels=True, specific_tags=tags))
        except Exception as e:  # pydicom raises several types on broken files
            raise InputError(f"DICOM file '{n}' cannot be read ({e}). Remove it or re-export the series.") from e
    return out


def _verify_geometry(folder: Path, names: list[str], headers: list[Any]) -> list[str]:
    """Check one geometry for all slices, no duplicates, no gaps; returns file names sorted along the normal."""
    if len(names) < 2:
        if headers and int(getattr(headers[0], "NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"The DICOM series in '{folder}' is a single multi-frame file, which is not supported. "
                             "Export it as one file per slice (classic CT).")
        raise InputError(f"The DICOM series in '{folder}' has only one slice: a 3D CT series is needed.")
    for name, h in zip(names, headers):
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if getattr(h, tag, None) is None:
                raise InputError(f"DICOM file '{name}' has no {tag}: it is not a CT slice with geometry "
                                 "(a screenshot or report?). Remove it or choose the CT series.")
    iop = np.array([[float(x) for x in h.ImageOrientationPatient] for h in headers])
    ps = np.array([[float(x) for x in h.PixelSpacing] for h in headers])
    rc = np.array([[int(h.Rows), int(h.Columns)] for h in headers])
    for arr, what in ((iop, "orientations"), (ps, "pixel spacings"), (rc, "image sizes")):
        bad = np.nonzero(np.abs(arr - arr[0]).max(axis=1) > 1e-4)[0]
        if bad.size:
            raise InputError(
                f"The DICOM series in '{folder}' mixes slices with different {what} (e.g. '{Path(names[0]).name}' and "
                f"'{Path(names[bad[0]]).name}'), so it is not one 3D volume. Separate the slices or re-export the series."
            )
    normal = np.cross(iop[0, :3], iop[0, 3:])
    ipp = np.array([[float(x) for x in h.ImagePositionPatient] for h in headers])
    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    names = [names[i] for i in order]
    step = np.diff(pos)
    if np.any(step < 1e-3):
        i = int(np.argmin(step))
        raise InputError(f"The DICOM series in '{folder}' has two slices at the same position ({pos[i]:.2f} mm: "
                         f"'{Path(names[i]).name}', '{Path(names[i + 1]).name}'); it may hold several acquisitions. "
                         "Separate them or re-export the series.")
    expected = float(np.median(step))
    bad = np.nonzero(np.abs(step - expected) > 0.05 * expected + 0.01)[0]
    if bad.size:
        i = int(bad[0])
        missing = max(int(round(step[i] / expected)) - 1, 0)
        raise InputError(
            f"The DICOM series in '{folder}' has uneven slice spacing: gap of {step[i]:.2f} mm (expected "
            f"{expected:.2f} mm) between slice positions {pos[i]:.2f} and {pos[i + 1]:.2f} mm after "
            f"'{Path(names[i]).name}'" + (f" (about {missing} slice(s) missing)" if missing else "") +
            ". Re-export or re-copy the complete series."
        )
    check_in_plane(folder, names, ipp[order], normal, float(ps[0].min()))
    return names


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """Read the largest DICOM series under ``folder`` as a Volume in HU; `InputError` on any problem."""
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder not found: '{folder}'. Check the path.")
    series = _find_series(folder)
    if not series:
        raise InputError(f"No DICOM images found in '{folder}' (or its subfolders). "
                         "Choose the folder that contains the CT slices, or a NIfTI/NRRD file.")
    series.sort(key=lambda s: len(s[2]), reverse=True)
    where, sid, names = series[0]
    warnings: list[str] = []
    others = [{"series_id": s, "folder": str(d), "n_slices": len(n)} for d, s, n in series[1:]]
    if others:
        warnings.append(f"'{folder}' holds {len(series)} DICOM series; using the largest ({len(names)} slices, "
                        f"series {sid}) and ignoring {len(others)} other(s).")
    check_left_out(where, sid, [n for d, _s, ns in series if d == where for n in ns])
    headers = _headers(names)
    names = _verify_geometry(where, names, headers)
    modality = str(getattr(headers[0], "Modality", "") or "")
    if modality and modality != "CT":
        warnings.append(f"The DICOM modality is '{modality}', not CT: this model is made for CT only.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    try:
        with quiet_itk():  # slice spacing and geometry were checked above, in our words
            img = reader.Execute()
    except RuntimeError as e:
        raise InputError(f"The DICOM series in '{where}' cannot be decoded ({str(e).strip().splitlines()[-1][:200]}). "
                         "It may use an unsupported compression; re-export it uncompressed.") from e
    if img.GetPixelID() in (sitk.sitkInt32, sitk.sitkUInt16):
        # Integer rescale promotes to int32; CT HU fit int16, which halves memory downstream.
        lo_hi = sitk.MinimumMaximumImageFilter()
        lo_hi.Execute(img)
        if -32768 <= lo_hi.GetMinimum() and lo_hi.GetMaximum() <= 32767:
            img = sitk.Cast(img, sitk.sitkInt16)
    return Volume.from_sitk(
        img, source_path=str(folder), pixel_type=img.GetPixelIDTypeAsString(), dicom_series_id=sid,
        dicom_folder=str(where), dicom_files=len(names), dicom_other_series=others, modality=modality,
        warnings=warnings,
    )


# -------------------------------------------------------------------- write
def write_dicom_series(vol: Volume, folder: str | os.PathLike, series_uid: str | None = None,
                       patient_id: str = "PHANTOM", modality: str = "CT", rescale_intercept: float = 0.0,
                       rescale_slope: float = 1.0, series_description: str = "LiverCT synthetic") -> list[Path]:
    """Write ``vol`` (HU) as one DICOM file per slice; returns the file paths.

    Stored values are round((HU - intercept) / slope) as int16. A left-handed
    direction is stored with the k axis reversed (DICOM slices always follow
    the row x column normal), which is the same image in physical space.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    if vol.array.ndim != 3:
        raise OutputError("Only 3D scalar volumes can be written as a DICOM series.")
    arr = np.asarray(vol.array)
    d = vol.direction.copy()
    origin = np.asarray(vol.origin, dtype=float)
    if np.linalg.det(d) < 0:
        origin = origin + d[:, 2] * vol.spacing[2] * (arr.shape[0] - 1)
        d[:, 2] = -d[:, 2]
        arr = arr[::-1]
    stored = np.round((arr.astype(np.float64) - rescale_intercept) / rescale_slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise OutputError("Intensities do not fit int16 DICOM pixels with this rescale slope/intercept.")
    stored = stored.astype("<i2")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"Cannot create DICOM folder '{folder}': {e.strerror}.") from e
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    now = _dt.datetime.now()
    tag = series_uid.replace(".", "")[-8:]
    paths = []
    sx, sy, sz = vol.spacing
    for k in range(arr.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        sop_uid = generate_uid()
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality, ds.PatientID, ds.PatientName = modality, patient_id, patient_id
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = series_description, 1, k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        pos = origin + d[:, 2] * sz * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in list(d[:, 0]) + list(d[:, 1])]
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing (j), column spacing (i)
        ds.SliceThickness = f"{sz:.6f}"
        ds.SpacingBetweenSlices = f"{sz:.6f}"
        ds.SliceLocation = f"{float(pos @ np.cross(d[:, 0], d[:, 1])):.6f}"
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{rescale_intercept:g}", f"{rescale_slope:g}", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"CT_{tag}_{k:04d}.dcm"
        tmp = folder / f".{path.name}.tmp-{os.getpid()}"
        try:
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, path)
        except OSError as e:
            if tmp.exists():
                tmp.unlink()
            raise OutputError(f"Cannot write DICOM file '{path}': {e.strerror}. Check the folder and disk space.") from e
        paths.append(path)
    return paths
