"""The one in-memory image type: a voxel array plus its physical geometry.

Conventions (the same as ITK/SimpleITK, so conversions are free):
- ``array`` is indexed ``[k, j, i]`` (slice, row, column), i.e. numpy order of
  ``sitk.GetArrayFromImage``; Slicer's ``arrayFromVolume`` uses the same order.
- ``spacing``, ``origin`` are given for axes ``(i, j, k)`` in millimetres.
- ``direction`` is a 3x3 matrix whose *columns* are the unit vectors of the
  i, j, k axes in **LPS** patient coordinates (ITK's convention).

Slicer works in RAS; ``ijk_to_ras`` / ``from_ijk_to_ras`` are the only places
where the LPS<->RAS sign flip happens.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_TINY_COSINE = 1e-100  # far below any real direction's precision (float32 files: ~1e-8)
# Largest |DᵀD - I| entry accepted as orthonormal: float32 headers and 6-decimal DICOM
# cosines stay below 1e-5; 1e-3 (0.06° of shear) moves a 500 mm field of view by 0.5 mm.
ORTHONORMAL_TOL = 1e-3


def shear_degrees(direction: np.ndarray) -> float:
    """Largest deviation from 90° between two axes of ``direction`` (columns, any length)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    unit = d / np.linalg.norm(d, axis=0)
    cos = np.clip(np.abs((unit.T @ unit)[np.triu_indices(3, 1)]), 0.0, 1.0)
    return float(np.degrees(np.arcsin(cos)).max())


def is_orthonormal(direction: np.ndarray, tol: float = ORTHONORMAL_TOL) -> bool:
    """True if the columns are unit vectors at right angles (DᵀD ≈ I): a rotation or reflection."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return bool(np.isfinite(d).all() and np.abs(d.T @ d - np.eye(3)).max() <= tol)


def nonzero_box(arr: np.ndarray) -> "tuple[slice, slice, slice] | None":
    """Slices of the [k, j, i] bounding box of the non-zero voxels (None if all zero).

    The k extent is found first, so the j/i scans only read that slab; the
    reductions are buffered by numpy, so no full-size temporary is made.
    """
    k = np.flatnonzero(arr.any(axis=(1, 2)))
    if not k.size:
        return None
    slab = arr[k[0] : k[-1] + 1]
    j = np.flatnonzero(slab.any(axis=(0, 2)))
    i = np.flatnonzero(slab.any(axis=(0, 1)))
    return (slice(int(k[0]), int(k[-1]) + 1), slice(int(j[0]), int(j[-1]) + 1),
            slice(int(i[0]), int(i[-1]) + 1))


@dataclass
class Volume:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        d = np.asarray(self.direction, dtype=float).reshape(3, 3)
        # Subnormal cosines (e.g. 1e-323 from a quaternion) make ITK's SVD of the direction fail
        # ("suspicious return value from SVDC") and its resampling silently return nothing.
        self.direction = np.where(np.abs(d) < _TINY_COSINE, 0.0, d)

    # ----------------------------------------------------------------- shape
    @property
    def shape_kji(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape[:3]
        return (i, j, k)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing))

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """Same geometry, new voxels (shape must match)."""
        if array.shape[:3] != self.array.shape[:3]:
            raise ValueError(f"array shape {array.shape} does not match volume {self.array.shape}")
        return replace(self, array=array, direction=self.direction.copy(), metadata={**self.metadata, **meta})

    def same_grid(self, other: "Volume", atol: float = 1e-4) -> bool:
        return (
            self.array.shape[:3] == other.array.shape[:3]
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol * 10)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    # -------------------------------------------------------------- geometry
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        m = self.ijk_to_lps()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    @classmethod
    def from_ijk_to_ras(cls, array: np.ndarray, ijk_to_ras: np.ndarray, **kw: Any) -> "Volume":
        """Build from a Slicer-style IJK->RAS matrix (array in KJI order)."""
        m = np.asarray(ijk_to_ras, dtype=float)
        lps = LPS_TO_RAS @ m[:3, :]
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        direction = lps[:3, :3] / spacing
        return cls(array, tuple(spacing), tuple(lps[:3, 3]), direction, **kw)

    def physical_points(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) continuous i, j, k indices -> (N, 3) LPS points."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def is_oblique(self, tol: float = 1e-3) -> bool:
        d = np.abs(self.direction)
        return not np.allclose(d, np.round(d), atol=tol)

    # ----------------------------------------------------------- SimpleITK
    def to_sitk(self):  # -> sitk.Image
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.flatten()))
        return img

    @classmethod
    def from_sitk(cls, img, **meta: Any) -> "Volume":
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(img)
        dim = img.GetDimension()
        if dim != 3:
            # Kept for checks.py to reject with a specific message.
            return cls(arr, metadata={"dimension": dim, "components": img.GetNumberOfComponentsPerPixel(), **meta})
        return cls(
            arr,
            img.GetSpacing(),
            img.GetOrigin(),
            np.array(img.GetDirection()).reshape(3, 3),
            metadata={"components": img.GetNumberOfComponentsPerPixel(), **meta},
        )
