"""Training cases synthesised from real anatomy label maps (``data.synthetic`` in a config).

``../shared/data/anatomy`` holds expert label maps of real patients without their CT. For each
map and variant, ``synthetic.anatomy_ct`` draws a CT-like image (seeded by the config's seed, the
map's name and the variant), written once under ``<cache_dir>/anatomy_synth/<key>/`` where the key
covers the synthesis parameters, the seed and ``SYNTH_VERSION``; later runs reuse the files.
The cases join the *training* split only: validation, test and leave-one-out folds stay real.

Config::

    data:
      synthetic:
        root: ../shared/data/anatomy   # anatomy_classes.json + *_anatomy.nii.gz
        variants: 2                    # images per map
        fraction: 0.5                  # share of training patches drawn from synthetic cases
        grid_mm: 1.5
        cases: []                      # optional subset of map names (ircad_p02, ...)
        thorax: {prob: 0.5, cap_mm: [40, 90]}  # optional: a heart and lower thorax above the dome

``thorax`` (``synthetic.thorax_cap``): with probability ``prob`` per map and variant, slices of
``cap_mm`` are added above the map's top with lungs, a heart resting on the liver's dome and
mediastinal fat (classes heart/mediastinum, negatives in training), so the network sees the dome
against the heart. Absent: the draws, files and cache folder are those of before.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .datasets import Case, DatasetError

SYNTH_VERSION = 1  # bump when anatomy_ct draws differently: old files are then not reused
CLASSES_FILE = "anatomy_classes.json"
SUFFIX = "_anatomy.nii.gz"
CASE_PREFIX = "synth_"


def is_synthetic(case: Case) -> bool:
    return case.case_id.startswith(CASE_PREFIX)


def _params(spec: Mapping[str, Any]):
    from LiverCTSegmentationLib.synthetic.anatomy_ct import SynthesisParams

    return SynthesisParams(grid_mm=float(spec.get("grid_mm", 1.5)))


def anatomy_maps(spec: Mapping[str, Any]) -> list[Path]:
    """The label maps a ``data.synthetic`` section names, sorted; DatasetError when missing."""
    root = Path(str(spec.get("root", ""))).expanduser()
    if not (root / CLASSES_FILE).is_file():
        raise DatasetError(f"data.synthetic.root: no {CLASSES_FILE} in '{root}'. Point it at the anatomy maps "
                           "(../shared/data/anatomy from the project root) or remove data.synthetic.")
    maps = sorted(root.glob(f"*{SUFFIX}"))
    wanted = [str(c) for c in (spec.get("cases") or [])]
    if wanted:
        by_name = {p.name[: -len(SUFFIX)]: p for p in maps}
        missing = [w for w in wanted if w not in by_name]
        if missing:
            raise DatasetError(f"data.synthetic.cases names {missing}, not found in '{root}'")
        maps = [by_name[w] for w in wanted]
    if not maps:
        raise DatasetError(f"data.synthetic.root '{root}' holds no *{SUFFIX} label maps")
    return maps


def variant_seed(seed: int, name: str, variant: int) -> int:
    digest = hashlib.sha256(f"{seed}:{name}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def thorax_spec(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """``data.synthetic.thorax`` checked and completed (None when absent: no cap, nothing changes)."""
    raw = spec.get("thorax")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise DatasetError("data.synthetic.thorax must be a mapping like {prob: 0.5, cap_mm: [40, 90]}")
    from LiverCTSegmentationLib.synthetic.thorax_cap import ThoraxParams

    prob = float(raw.get("prob", 0.5))
    cap = [float(c) for c in raw.get("cap_mm", ThoraxParams.cap_mm)]
    if not 0.0 <= prob <= 1.0:
        raise DatasetError(f"data.synthetic.thorax.prob must lie in [0, 1], not {prob}")
    if len(cap) != 2 or not 0.0 < cap[0] <= cap[1]:
        raise DatasetError(f"data.synthetic.thorax.cap_mm must be [low, high] mm with 0 < low <= high, not {cap}")
    return {"prob": prob, "cap_mm": cap, "max_gap_mm": float(raw.get("max_gap_mm", ThoraxParams.max_gap_mm))}


def _folder(spec: Mapping[str, Any], cache_dir: Path, seed: int) -> Path:
    key: dict[str, Any] = {"v": SYNTH_VERSION, "seed": seed, "params": repr(_params(spec))}
    thorax = thorax_spec(spec)
    if thorax is not None:  # only then: without it the key (and so the folder) is the old one
        key["thorax"] = thorax
    text = json.dumps(key, sort_keys=True)
    return cache_dir / "anatomy_synth" / hashlib.sha1(text.encode()).hexdigest()[:12]


def _write_atomic(vol, path: Path) -> None:
    from LiverCTSegmentationLib.engine import io

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.nii.gz")
    io.write_volume(vol, tmp, overwrite=True)
    os.replace(tmp, path)


def synthesize_case(path: Path, names: Mapping[int, str], seed: int, folder: Path, variant: int,
                    spec: Mapping[str, Any]) -> Case:
    """One map's variant: the files are drawn once (missing or partial files are redrawn)."""
    name = path.name[: -len(SUFFIX)]
    ct_path, lab_path = folder / f"{name}_v{variant}_ct.nii.gz", folder / f"{name}_v{variant}_label.nii.gz"
    thorax = thorax_spec(spec)
    if not (ct_path.is_file() and lab_path.is_file()):
        from LiverCTSegmentationLib.engine import io
        from LiverCTSegmentationLib.synthetic.anatomy_ct import synthesize_volume

        anatomy = io.read_volume(path)
        if thorax is not None:
            anatomy, names = _with_thorax(anatomy, names, thorax, seed, name, variant, spec)
        ct, labels = synthesize_volume(anatomy, names, variant_seed(seed, name, variant), _params(spec))
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(labels, lab_path)
        _write_atomic(ct, ct_path)  # last: its presence means the pair is complete
    classes = folder / CLASSES_FILE if thorax is not None else path.parent / CLASSES_FILE
    return Case(f"{CASE_PREFIX}{name}_v{variant}", name, str(ct_path), str(lab_path), str(classes))


def _with_thorax(anatomy, names: Mapping[int, str], thorax: Mapping[str, Any], seed: int, name: str, variant: int,
                 spec: Mapping[str, Any]):
    """The map on the synthesis grid, capped with a thorax with probability ``thorax["prob"]``
    (its own seed, so the image's draws keep theirs), and the names with the thorax classes."""
    import numpy as np
    from LiverCTSegmentationLib.synthetic.anatomy_ct import labels_on_grid
    from LiverCTSegmentationLib.synthetic.thorax_cap import ThoraxParams, add_thorax_cap_volume, thorax_names

    labels = labels_on_grid(anatomy, _params(spec))  # capping on the coarser grid is cheaper
    rng = np.random.default_rng(variant_seed(seed, f"{name}:thorax", variant))
    if rng.random() >= thorax["prob"]:
        return labels, thorax_names(names)
    params = ThoraxParams(cap_mm=tuple(thorax["cap_mm"]), max_gap_mm=thorax["max_gap_mm"])
    labels, names, _ = add_thorax_cap_volume(labels, names, rng, params, log_name=name)
    return labels, names


def _write_classes(table: Mapping[str, Any], folder: Path) -> None:
    """The anatomy classes table plus the thorax classes, beside the draws (their labels hold them)."""
    from LiverCTSegmentationLib.synthetic.anatomy_ct import class_names
    from LiverCTSegmentationLib.synthetic.thorax_cap import thorax_names

    out = dict(table, classes={str(v): n for v, n in sorted(thorax_names(class_names(table)).items())})
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{CLASSES_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(out, indent=1), encoding="utf-8")
    os.replace(tmp, folder / CLASSES_FILE)


def synthetic_cases(spec: Mapping[str, Any], cache_dir: str | os.PathLike, seed: int,
                    jobs: int | None = 1) -> list[Case]:
    """Every (map, variant) case of ``spec``, drawing the images that are not on disk yet
    (``jobs`` processes at once, as ``data.prepare_jobs``)."""
    from LiverCTSegmentationLib.synthetic.anatomy_ct import class_names

    from .parallel import run_jobs

    maps = anatomy_maps(spec)
    table = json.loads((maps[0].parent / CLASSES_FILE).read_text(encoding="utf-8"))
    names = class_names(table)
    folder = _folder(spec, Path(cache_dir), seed)
    variants = int(spec.get("variants", 1))
    if variants < 1:
        raise DatasetError("data.synthetic.variants must be at least 1")
    if thorax_spec(spec) is not None:
        _write_classes(table, folder)
    args = [(p, names, seed, folder, v, dict(spec)) for p in maps for v in range(variants)]
    return list(run_jobs(synthesize_case, args, jobs))


def case_weights(cases: list[Case], fraction: float) -> list[float] | None:
    """Sampling weights giving synthetic cases ``fraction`` of the patches (None: uniform)."""
    synth = [is_synthetic(c) for c in cases]
    n_syn, n_real = sum(synth), len(cases) - sum(synth)
    if not n_syn or not n_real:
        return None
    fraction = min(max(float(fraction), 0.0), 1.0)
    return [fraction / n_syn if s else (1.0 - fraction) / n_real for s in synth]
