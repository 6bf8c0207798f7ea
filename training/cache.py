"""Preprocessing cache: each case resampled to a stage's spacing, stored as .npy.

Why: resampling a full CT takes seconds; training draws thousands of patches.
Each (case, stage) is preprocessed once with exactly the engine's functions
(``engine.preprocess.resample_to_spacing`` linear for CT,
``resample_like`` nearest for labels onto the resampled CT grid, and
``normalise`` with the stage's intensity spec), then memory-mapped.

Layout: ``<cache_dir>/<case_id>-<key16>/`` with
  ``image.npy``  float16 normalised CT [k, j, i]
  ``label.npy``  uint8 mapped labels [k, j, i]
  ``fg_idx.npy`` flat (raveled C-order) indices of label > 0 (int64)
  ``tumor_idx.npy`` flat indices of the task's tumour label (may be empty)
  ``meta.json``  spacing/origin/direction of the resampled grid, shape,
                 foreground bounding box (k, j, i, inclusive lo / exclusive hi),
                 voxel counts, source files and the key's inputs.
The key is the SHA256 of (image and label file identity, spacing, intensity,
label mapping, cache format version). File identity is size + mtime by
default (cheap); ``hash_files=True`` uses the files' SHA256 instead. A changed
input, spacing, intensity or mapping gives a new key, so stale entries are
never read. Entries are written to a temporary folder and renamed, so a
killed run leaves no half-written entry.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .datasets import Case, case_mapping
from .labels import TASK_TUMOR_LABEL

CACHE_VERSION = 1


def _get(spec: Any, key: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(key, default)
    return getattr(spec, key, default)


def file_identity(path: str | os.PathLike | None, hash_files: bool = False) -> dict[str, Any] | None:
    if path is None:
        return None
    p = Path(path)
    st = p.stat()
    ident: dict[str, Any] = {"name": p.name, "size": st.st_size}
    if hash_files:
        ident["sha256"] = sha256_file(p)
    else:
        ident["mtime_ns"] = st.st_mtime_ns
    return ident


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(case: Case, stage_spec: Any, mapping: Mapping[int, int], hash_files: bool = False) -> tuple[str, dict]:
    inputs = {
        "version": CACHE_VERSION,
        "image": file_identity(case.image_path, hash_files),
        "label": file_identity(case.label_path, hash_files),
        "spacing": [float(s) for s in _get(stage_spec, "spacing")],
        "intensity": {k: v for k, v in sorted(dict(_get(stage_spec, "intensity")).items())},
        "mapping": {str(k): int(v) for k, v in sorted(mapping.items())},
    }
    if _orientation(stage_spec) != "native":
        inputs["orientation"] = _orientation(stage_spec)
    crop = _get(stage_spec, "margin_mm")
    if crop is not None:
        inputs["crop_margin_mm"] = float(crop)
    text = json.dumps(inputs, sort_keys=True, default=float)
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), inputs


@dataclass
class CachedCase:
    case_id: str
    image: np.ndarray            # float16 [k, j, i], normalised
    label: np.ndarray | None     # uint8 [k, j, i]
    fg_indices: np.ndarray       # flat indices of label > 0
    tumor_indices: np.ndarray    # flat indices of the tumour label
    meta: dict[str, Any]
    path: Path

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.meta["spacing"])  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)

    def volume(self):
        """The cached image as an engine Volume (float32) on the resampled grid."""
        from LiverCTSegmentationLib.engine.volume import Volume

        m = self.meta
        return Volume(np.asarray(self.image, dtype=np.float32), m["spacing"], m["origin"], np.asarray(m["direction"]))


def _entry_dir(cache_dir: Path, case: Case, key: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case.case_id)
    return cache_dir / f"{safe}-{key[:16]}"


def _bbox(mask: np.ndarray) -> list[list[int]] | None:
    if not mask.any():
        return None
    out = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        nz = np.nonzero(mask.any(axis=other))[0]
        out.append([int(nz[0]), int(nz[-1]) + 1])
    return out


def _orientation(spec: Any) -> str:
    return str(_get(spec, "orientation", "native") or "native")


def stage_cache_spec(stage_name: str, st: Mapping[str, Any]) -> dict[str, Any]:
    """What the cache keys and builds a stage's entries from.

    A fine stage only ever trains and runs inside the liver box plus its margin, so its
    entries hold just that box (``margin_mm``, default 20 mm as in export); a coarse stage
    always keeps the whole volume.
    """
    spec = dict(st)
    if stage_name == "coarse":
        spec.pop("margin_mm", None)
    else:
        spec["margin_mm"] = float(spec.get("margin_mm", 20.0))
    return spec


def _liver_crop_kji(label: np.ndarray, margin_mm: float, spacing_ijk) -> list[list[int]]:
    """[lo, hi) per axis (k, j, i) of the liver's (labels 1, 2) bounding box plus ``margin_mm``, clipped."""
    box = _bbox(np.isin(label, (1, 2)))
    m = np.ceil(margin_mm / np.asarray(spacing_ijk, float)[::-1]).astype(int)
    return [[max(lo - int(mk), 0), min(hi + int(mk), n)] for (lo, hi), mk, n in zip(box, m, label.shape)]


def build_entry(case: Case, stage_spec: Any, cache_dir: str | Path, task: str = "liver_tumor",
                label_mapping: Mapping[Any, Any] | None = None, hash_files: bool = False) -> Path:
    """Preprocess one case for one stage into the cache (no-op if present)."""
    from LiverCTSegmentationLib.engine import preprocess

    from .datasets import load_case

    mapping = case_mapping(case, task, label_mapping)
    key, inputs = cache_key(case, stage_spec, mapping, hash_files)
    cache_dir = Path(cache_dir)
    final = _entry_dir(cache_dir, case, key)
    if (final / "meta.json").is_file():
        return final
    ct, lab = load_case(case, task, label_mapping)
    spacing = tuple(float(s) for s in _get(stage_spec, "spacing"))
    ct_r = preprocess.resample_to_spacing(ct, spacing, interpolation="linear", orientation=_orientation(stage_spec))
    image = preprocess.normalise(np.asarray(ct_r.array, dtype=np.float32), dict(_get(stage_spec, "intensity")))
    label = None
    if lab is not None:
        lab_r = preprocess.resample_like(lab, ct_r)
        label = np.asarray(lab_r.array, dtype=np.uint8)
        if label.shape != image.shape:
            raise RuntimeError(f"{case.case_id}: resampled label {label.shape} != image {image.shape}")
    margin = _get(stage_spec, "margin_mm")
    crop_kji = None
    if margin is not None and label is not None and np.isin(label, (1, 2)).any():
        # A fine stage only ever trains and runs inside the liver box + its margin: store just that.
        crop_kji = _liver_crop_kji(label, float(margin), ct_r.spacing)
        sl = tuple(slice(lo, hi) for lo, hi in crop_kji)
        image, label = np.ascontiguousarray(image[sl]), np.ascontiguousarray(label[sl])
        (k0, k1), (j0, j1), (i0, i1) = crop_kji
        ct_r = preprocess.crop_box(ct_r, (i0, j0, k0), (i1 - 1, j1 - 1, k1 - 1))
    tumor_value = TASK_TUMOR_LABEL.get(task)
    fg = np.flatnonzero(label > 0) if label is not None else np.zeros(0, np.int64)
    tumor = (np.flatnonzero(label == tumor_value) if label is not None and tumor_value is not None
             else np.zeros(0, np.int64))
    meta = {
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "image_path": case.image_path,
        "label_path": case.label_path,
        "task": task,
        "key": key,
        "inputs": inputs,
        "shape_kji": list(image.shape),
        "spacing": list(ct_r.spacing),
        "origin": list(ct_r.origin),
        "direction": np.asarray(ct_r.direction).tolist(),
        "crop_kji": crop_kji,
        "native_spacing": list(ct.spacing),
        "native_shape_kji": list(ct.array.shape),
        "fg_bbox_kji": _bbox(label > 0) if label is not None else None,
        "n_fg": int(fg.size),
        "n_tumor": int(tumor.size),
        "label_counts": (np.bincount(label.ravel(), minlength=1).tolist() if label is not None else None),
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        np.save(tmp / "image.npy", image.astype(np.float16))
        if label is not None:
            np.save(tmp / "label.npy", label)
        np.save(tmp / "fg_idx.npy", fg.astype(np.int64))
        np.save(tmp / "tumor_idx.npy", tumor.astype(np.int64))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same entry first: theirs is identical.
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_cached(case: Case, stage_spec: Any, cache_dir: str | Path | None = None, task: str = "liver_tumor",
                label_mapping: Mapping[Any, Any] | None = None, mmap: bool = True, build: bool = True,
                hash_files: bool = False) -> CachedCase:
    """The cached arrays of ``case`` for ``stage_spec`` (built first if missing).

    ``stage_spec``: a config stage dict or an engine ``StageSpec`` (needs
    ``spacing`` and ``intensity``). ``cache_dir`` may also be given as
    ``stage_spec["cache_dir"]``.
    """
    cache_dir = Path(cache_dir or _get(stage_spec, "cache_dir") or ".cache/liverct")
    mapping = case_mapping(case, task, label_mapping)
    key, _ = cache_key(case, stage_spec, mapping, hash_files)
    d = _entry_dir(cache_dir, case, key)
    if not (d / "meta.json").is_file():
        if not build:
            raise FileNotFoundError(f"no cache entry for {case.case_id} in {cache_dir}; run `liverseg-train cache`")
        d = build_entry(case, stage_spec, cache_dir, task, label_mapping, hash_files)
    mode = "r" if mmap else None
    meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
    label = np.load(d / "label.npy", mmap_mode=mode) if (d / "label.npy").is_file() else None
    return CachedCase(case.case_id, np.load(d / "image.npy", mmap_mode=mode), label,
                      np.load(d / "fg_idx.npy"), np.load(d / "tumor_idx.npy"), meta, d)


# ---------------------------------------------------------------- command
def main_cache(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="liverseg-train cache",
                                 description="Preprocess train/val cases into the stage caches.")
    ap.add_argument("config", nargs="?", help="config YAML or preset name")
    ap.add_argument("--config", dest="config_opt")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=c")
    ap.add_argument("--stage", action="append", help="stage(s) to cache (default all)")
    ap.add_argument("--subset", default="train,val", help="comma list of train,val,test,all (default train,val)")
    ap.add_argument("--hash-files", action="store_true", help="key on file SHA256 instead of size+mtime")
    a = ap.parse_args(argv)
    from .config import load_config
    from .datasets import read_dataset
    from .split import load_or_create_split, split_params, split_path, subset_cases

    cfg_path = a.config_opt or a.config
    if not cfg_path:
        ap.error("a config is required")
    cfg = load_config(cfg_path, a.overrides)
    data = cfg["data"]
    if data.get("kind") == "phantom":
        print("phantom data are generated and cached by `liverseg-train train`; nothing to do")
        return 0
    cases = read_dataset(data)
    seed, fractions = split_params(cfg)
    split = load_or_create_split(split_path(cfg), cases, seed=seed, fractions=fractions)
    subsets = ["train", "val", "test"] if a.subset == "all" else [s.strip() for s in a.subset.split(",") if s.strip()]
    selected = sorted({c for s in subsets for c in subset_cases(split, s, cases)}, key=lambda c: c.case_id)
    cache_dir = data.get("cache_dir") or str(Path(cfg["output"]["run_dir"]) / "cache")
    stages = a.stage or list(cfg["stages"])
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        def tqdm(x, **_):  # type: ignore[no-redef]
            return x
    for st in stages:
        spec = stage_cache_spec(st, cfg["stages"][st])
        for case in tqdm(selected, desc=f"cache {st}", unit="case"):
            build_entry(case, spec, cache_dir, data.get("task", "liver_tumor"),
                        data.get("label_mapping"), a.hash_files or bool(data.get("cache_hash_files")))
    print(f"cached {len(selected)} cases x {len(stages)} stages under {cache_dir}")
    return 0
