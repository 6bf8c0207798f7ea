"""Real liver tumour shapes from expert anatomy label maps, for pasting as synthetic lesions.

Why: ellipsoids teach a network "round dark blob"; real tumours are lobulated, confluent,
elongated. ``../shared/data/anatomy`` holds 16 patients' expert maps (class 2 = liver tumour), so
each 26-connected tumour component, resampled to a stage's grid, becomes a shape that
``lesion_synth.add_lesions`` can paste into real CT patches (``train.lesions.shapes``).

Building reads every map (a few seconds); ``cache_dir`` keeps the bank as one ``.npz`` keyed by
the maps' names, sizes and mtimes plus the spacing and limits, and a process-wide memo spares
the reread when a later stage or fold asks for the same bank.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .datasets import DatasetError

SUFFIX = "_anatomy.nii.gz"
TUMOUR = 2              # liver_tumor in anatomy_classes.json
MIN_MM3 = 30.0          # the post-processing's smallest lesion: smaller components are label noise
BANK_VERSION = 1        # bump when extraction changes: old cache files are then not reused
_MEMO: dict[str, "TumourShapeBank"] = {}


class TumourShapeBank:
    """Bool masks (k, j, i) of real tumours on one stage grid, each cropped to its bounding box."""

    def __init__(self, shapes: Sequence[np.ndarray], sources: Sequence[str] | None = None) -> None:
        self.shapes = [np.ascontiguousarray(s, dtype=bool) for s in shapes]
        self.sources = list(sources) if sources is not None else [""] * len(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    @classmethod
    def from_folder(cls, folder: str | Path, spacing: Sequence[float], max_extent: Sequence[int] | None = None,
                    min_mm3: float = MIN_MM3, cache_dir: str | Path | None = None) -> "TumourShapeBank":
        """Every tumour component of ``folder/*_anatomy.nii.gz`` at ``spacing`` (i, j, k mm).

        Components under ``min_mm3`` are dropped; so are those wider than ``max_extent`` voxels
        (k, j, i; a shorter sequence limits the last axes) on the stage grid: a tumour cut to fit
        would carry a flat face no real one has.
        """
        folder = Path(folder).expanduser()
        maps = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
        if not maps:
            raise DatasetError(f"train.lesions.shapes: '{folder}' holds no *{SUFFIX} label maps. Point it at the "
                               "anatomy maps (../shared/data/anatomy from the project root) or remove the key.")
        sp = tuple(float(s) for s in spacing)
        if len(sp) != 3:
            raise ValueError(f"tumour shapes need the stage's 3D spacing (i, j, k mm), got {list(sp)}")
        limit = tuple(int(e) for e in max_extent) if max_extent is not None else ()
        key = _key(maps, sp, limit, float(min_mm3))
        if key in _MEMO:
            return _MEMO[key]
        cached = Path(cache_dir) / f"tumour_shapes_{key}.npz" if cache_dir else None
        if cached is not None and cached.is_file():
            bank = _load(cached)
        else:
            shapes, sources = [], []
            for path in maps:
                for m in _components(path, sp, float(min_mm3)):
                    if all(n <= e for n, e in zip(m.shape[::-1], limit[::-1])):
                        shapes.append(m)
                        sources.append(path.name[: -len(SUFFIX)])
            bank = cls(shapes, sources)
            if cached is not None:
                _save(bank, cached)
        if not len(bank):
            raise DatasetError(f"train.lesions.shapes: no tumour shape of at least {min_mm3:g} mm^3 that fits "
                               f"{list(limit) or 'the patch'} voxels at {list(sp)} mm in the {len(maps)} maps of "
                               f"'{folder}'. Point the key at maps with liver tumours (class {TUMOUR}) or remove it.")
        _MEMO[key] = bank
        return bank


def _key(maps: Sequence[Path], spacing, limit, min_mm3: float) -> str:
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in maps]
    blob = json.dumps([BANK_VERSION, str(maps[0].parent.resolve()), stats, spacing, limit, min_mm3])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _components(path: Path, spacing: Sequence[float], min_mm3: float) -> list[np.ndarray]:
    """The map's tumour components (26-connected), each resampled (nearest) and cropped."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    cc = sitk.ConnectedComponent(sitk.Cast(img == TUMOUR, sitk.sitkUInt8), True)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(cc)
    voxel_mm3 = float(np.prod(img.GetSpacing()))
    out = []
    for lab in stats.GetLabels():
        if stats.GetNumberOfPixels(lab) * voxel_mm3 < min_mm3:
            continue
        box = stats.GetBoundingBox(lab)                    # (x, y, z, size_x, size_y, size_z)
        roi = sitk.Cast(sitk.RegionOfInterest(cc, box[3:], box[:3]) == lab, sitk.sitkUInt8)
        m = sitk.GetArrayFromImage(_resample(roi, spacing)).astype(bool)
        nz = np.nonzero(m)
        if nz[0].size:                                     # a sliver thinner than the grid can vanish
            out.append(m[tuple(slice(a.min(), a.max() + 1) for a in nz)])
    return out


def _resample(roi, spacing: Sequence[float]):
    """Nearest resampling of a box onto ``spacing`` covering the same physical extent (corner-aligned)."""
    import SimpleITK as sitk

    old, new = np.array(roi.GetSpacing()), np.array(spacing, dtype=float)
    size = np.maximum(1, np.round(np.array(roi.GetSize()) * old / new)).astype(int)
    direction = np.array(roi.GetDirection()).reshape(3, 3)
    origin = np.array(roi.GetOrigin()) + direction @ ((new - old) / 2.0)
    return sitk.Resample(roi, [int(s) for s in size], sitk.Transform(), sitk.sitkNearestNeighbor,
                         origin.tolist(), new.tolist(), roi.GetDirection(), 0, sitk.sitkUInt8)


def _save(bank: TumourShapeBank, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = np.concatenate([s.ravel() for s in bank.shapes]) if len(bank) else np.zeros(0, bool)
    dims = np.array([s.shape for s in bank.shapes], dtype=np.int64).reshape(-1, 3)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, flat=flat, dims=dims, sources=np.array(bank.sources, dtype=str))
    tmp.replace(path)                                      # atomic: a parallel fold never reads half a file


def _load(path: Path) -> TumourShapeBank:
    with np.load(path) as z:
        flat, dims, sources = z["flat"], z["dims"], [str(s) for s in z["sources"]]
    ends = np.cumsum([int(np.prod(d)) for d in dims])
    parts = np.split(flat, ends[:-1]) if len(dims) else []
    return TumourShapeBank([p.reshape(tuple(d)) for p, d in zip(parts, dims)], sources)
