"""Cheap sanity checks that an image is an abdominal CT the engine can segment.

Run before any heavy work: the memory check comes first, and intensity
statistics use a strided subsample (~2 M voxels), so a 512x512x300 CT takes
well under 0.2 s. Errors are `InputError`/`ResourceError` saying what to do;
soft problems come back as warning strings.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import InputError, ResourceError
from .volume import Volume, is_orthonormal, shear_degrees

MIN_VOXELS_PER_AXIS = 8
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 20.0
# Engine peak beyond the input array: float32 working copies, uint8 labelmap,
# int32 component labels at native resolution (see reference/performance.md).
BYTES_PER_VOXEL = 12
FIXED_OVERHEAD_BYTES = 400 << 20  # model weights, torch runtime, coarse grids
SAMPLE_VOXELS = 2_000_000
SOFT_TISSUE_HU = (-150.0, 250.0)
AIR_HU = (-1100.0, -800.0)
MIN_BODY_ML = 100.0
# DICOM modalities whose values are not Hounsfield units, as the message names them.
NON_CT_MODALITIES = {"MR": "an MR", "PT": "a PET", "NM": "a nuclear medicine", "US": "an ultrasound"}
RAW_CT_OFFSET = 1024  # the usual RescaleIntercept magnitude: raw CT stores air near 0


def estimate_peak_bytes(shape_kji: tuple[int, ...]) -> int:
    """Rough peak memory the engine needs for an image of this size."""
    return int(np.prod(shape_kji[:3], dtype=np.int64)) * BYTES_PER_VOXEL + FIXED_OVERHEAD_BYTES


def _subsample(arr: np.ndarray) -> tuple[np.ndarray, int]:
    step = max(1, math.ceil((arr.size / SAMPLE_VOXELS) ** (1 / 3)))
    return np.asarray(arr[::step, ::step, ::step], dtype=np.float32), step


def _mm(sp: np.ndarray) -> str:
    return "x".join(f"{float(s):.3g}" for s in sp)


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_volume(vol: Volume, max_bytes: int | None = None, available_bytes: int | None = None) -> list[str]:
    """Raise `InputError`/`ResourceError` for images that cannot be segmented; return warnings otherwise."""
    src = vol.metadata.get("source_path")
    name = f"'{src}'" if src else "The image"
    arr = vol.array
    warnings: list[str] = list(vol.metadata.get("warnings", []))

    # --- structure
    dim = int(vol.metadata.get("dimension", 3))
    comps = int(vol.metadata.get("components", 1) or 1)
    if dim != 3:
        raise InputError(f"{name} is {dim}D; a 3D CT volume is needed (for a 4D/time series, extract one 3D phase).")
    if comps > 1 or (arr.ndim == 4 and arr.shape[3] in (2, 3, 4)):
        raise InputError(f"{name} has {max(comps, arr.shape[-1])} components per voxel (colour/RGB or vector image); "
                         "a single-channel CT in Hounsfield units is needed.")
    if arr.ndim != 3:
        raise InputError(f"{name} has {arr.ndim} array dimensions; a 3D CT volume is needed.")
    if arr.size == 0:
        raise InputError(f"{name} is empty (size {vol.size_ijk}); the file holds no voxels.")
    if min(arr.shape) < MIN_VOXELS_PER_AXIS:
        raise InputError(f"{name} is too small ({'x'.join(map(str, vol.size_ijk))} voxels); at least "
                         f"{MIN_VOXELS_PER_AXIS} voxels per axis are needed. Is it a single slice or a thumbnail?")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name} has pixel type {arr.dtype}, which is not a CT intensity type.")
    modality = str(vol.metadata.get("modality") or "").upper()
    if modality in NON_CT_MODALITIES:
        raise InputError(f"{name} is {NON_CT_MODALITIES[modality]} series (DICOM Modality '{modality}'), not CT: "
                         "this model segments CT in Hounsfield units only. Choose the patient's CT series.")

    # --- geometry
    sp = np.asarray(vol.spacing, dtype=float)
    if not np.isfinite(sp).all() or (sp <= 0).any():
        raise InputError(f"{name} has invalid voxel spacing {tuple(vol.spacing)}; fix the header (spacing must be positive).")
    if (sp < MIN_SPACING_MM).any() or (sp > MAX_SPACING_MM).any():
        raise InputError(f"{name} has implausible voxel spacing {_mm(sp)} mm (CT spacing is "
                         f"{MIN_SPACING_MM}-{MAX_SPACING_MM} mm). The header is probably wrong (units in m or cm?); fix it.")
    d = vol.direction
    if not np.isfinite(d).all() or abs(abs(np.linalg.det(d)) - 1.0) > 1e-2:
        raise InputError(f"{name} has an invalid orientation matrix (not a rotation); fix the header.")
    if not is_orthonormal(d):
        raise InputError(sheared_grid_message(name, d))
    if not np.isfinite(np.asarray(vol.origin)).all():
        raise InputError(f"{name} has an invalid origin {vol.origin}; fix the header.")

    # --- memory before any big allocation
    available = available_bytes
    if available is None:
        import psutil

        available = int(psutil.virtual_memory().available)
    limit = min(available, max_bytes) if max_bytes is not None else available
    need = estimate_peak_bytes(arr.shape)
    if need > limit:
        raise ResourceError(
            f"{name} ({'x'.join(map(str, vol.size_ijk))} voxels) needs about {_fmt_bytes(need)} of memory but only "
            f"{_fmt_bytes(limit)} is available. Crop the image to the abdomen, close other programs or use a "
            "computer with more memory."
        )

    # --- values
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr.sum(dtype=np.float64)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            if bad:
                raise InputError(f"{name} contains {bad} NaN/infinite voxel values; the file is damaged or was "
                                 "produced by a faulty conversion. Re-export it.")
    sub, _step = _subsample(arr)
    lo, hi = float(sub.min()), float(sub.max())
    if lo == hi and arr.min() == arr.max():
        raise InputError(f"{name} has the same value ({lo:g}) in every voxel: there is no image content.")
    _check_hounsfield(name, arr, sub)

    # --- body present
    voxel_ml = float(np.prod(sp)) / 1000.0
    soft = (sub >= SOFT_TISSUE_HU[0]) & (sub <= SOFT_TISSUE_HU[1])
    body_ml = float(soft.mean()) * arr.size * voxel_ml
    if body_ml < MIN_BODY_ML:
        raise InputError(f"{name} contains only {body_ml:.0f} mL of soft tissue (-150..250 HU): no abdomen is "
                         "visible in the field of view. Check that this is the abdominal CT series.")

    # --- warnings
    if vol.is_oblique():
        warnings.append("The image is oblique (tilted axes); it is handled, but check the result's alignment.")
    if sp.max() / sp.min() > 5.0:
        warnings.append(f"Very anisotropic voxels {_mm(sp)} mm; thin-slice CT gives better results.")
    if sp[:2].min() < 0.3 or sp[:2].max() > 2.0 or sp[2] > 7.0:
        warnings.append(f"Unusual voxel spacing {_mm(sp)} mm for abdominal CT.")
    extent_k = sp[2] * arr.shape[0]
    if extent_k < 120.0:
        warnings.append(f"The scan covers only {extent_k:.0f} mm head-to-foot; the liver may be partly outside it.")
    edge = np.concatenate([soft[:, :, 0].ravel(), soft[:, :, -1].ravel(), soft[:, 0, :].ravel(), soft[:, -1, :].ravel()])
    if edge.mean() > 0.3:
        warnings.append("The body touches the image border: the field of view is partial and may cut the liver.")
    return warnings


def sheared_grid_message(name: str, direction: np.ndarray) -> str:
    """Why a sheared grid is refused: every writer of the result would move it (ITK's NIfTI writer
    orthogonalises the matrix), so the labelmap could not lie on the CT."""
    angle = 90.0 - shear_degrees(direction)
    return (f"{name} has a sheared voxel grid: its axes meet at {angle:.1f}° instead of 90° (the direction "
            "matrix is not a rotation), so a segmentation saved on it would be misplaced. Resample it onto an "
            "orthogonal grid first: a sheared CT usually comes from a gantry-tilted DICOM series, which 3D "
            "Slicer's DICOM import (acquisition geometry regularization: harden transform) or dcm2niix converts "
            "to an orthogonal grid.")


def _check_hounsfield(name: str, arr: np.ndarray, sub: np.ndarray) -> None:
    """Reject intensity distributions that are clearly not CT in Hounsfield units."""
    # Padding outside the reconstruction circle (-3024, -2048, -2000) is not air; ignore it.
    valid = sub[sub > -1500]
    if valid.size < 0.05 * sub.size:
        raise InputError(f"{name} is almost entirely padding below -1500 HU; no CT content found.")
    p_min, p_lo, p99, p_hi = np.percentile(valid, [0.1, 0.5, 99, 99.5])
    lo, hi = float(valid.min()), float(valid.max())
    hint = ("Use the original CT in Hounsfield units (not MR, not an 8-bit/PNG export, not a normalised or "
            "rescaled image).")
    if arr.dtype in (np.uint8, np.int8, np.bool_) or (lo >= 0 and hi <= 255):
        raise InputError(f"{name} has intensities {lo:g}..{hi:g}, like an 8-bit image, not CT Hounsfield units. {hint}")
    if p_hi - p_lo < 20:
        raise InputError(f"{name} spans only {p_lo:.3g}..{p_hi:.3g} in 99% of voxels; Hounsfield units span "
                         f"-1000 (air) to +1000 (bone). The image looks normalised. {hint}")
    # Any abdominal CT, even one cropped inside the body, has fat (about -100 HU) or air (-1000 HU).
    if p_min > -50:
        what = f"{name} has no negative values (0.1th percentile {p_min:.0f}; CT air is about -1000 HU, fat about " \
               "-100 HU), so it does not look like CT in Hounsfield units."
        if _looks_like_raw_ct(valid):
            raise InputError(f"{what} Its values look like CT stored without its rescale intercept (air near 0, "
                             "soft tissue near 1064): re-export it with RescaleIntercept applied (usually -1024).")
        raise InputError(f"{what} It looks like MR or another non-CT image; this model needs CT in Hounsfield "
                         "units. Choose the patient's CT series.")
    if p99 > 3500 or p_lo < -1400:
        raise InputError(f"{name} has intensities {p_lo:.0f}..{p_hi:.0f} (0.5-99.5th percentile), outside the CT "
                         f"Hounsfield range. {hint}")


def _looks_like_raw_ct(valid: np.ndarray) -> bool:
    """Raw CT (HU + 1024) has air near 0 and a body whose commonest value is fat or soft tissue
    (-150..150 HU). MR also has a dark background, but its tissue values fall anywhere."""
    hu = valid - RAW_CT_OFFSET
    body = hu[hu > -800]
    if np.mean(hu < -800) < 0.01 or body.size < 0.05 * hu.size:
        return False
    counts, edges = np.histogram(body, bins=np.arange(-800.0, 3001.0, 25.0))
    mode = float(edges[int(np.argmax(counts))]) + 12.5
    in_fat_or_soft = float(np.mean((body >= -200) & (body <= 300)))
    return -150.0 <= mode <= 150.0 and in_fat_or_soft >= 0.5
