"""Synthetic training data for the ``phantom`` preset, generated once into the cache.

Phantoms come from ``synthetic.phantom.make_phantom`` with varied seeds,
orientations and spacings, written as NIfTI pairs so the rest of the pipeline
(stage caching, evaluation, export) treats them like any real dataset.
A manifest records the generation parameters; changed parameters regenerate.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .datasets import Case


def phantom_specs(pcfg: dict) -> dict[str, list[dict[str, Any]]]:
    """Per split, the make_phantom keyword sets (seed, spacing, orientation, shape)."""
    base = int(pcfg.get("seed", 1000))
    spacings = pcfg.get("spacings") or [None]
    orients = pcfg.get("orientations") or ["LPS"]
    out: dict[str, list[dict[str, Any]]] = {}
    n = 0
    for split in ("train", "val", "test"):
        out[split] = []
        for _ in range(int(pcfg.get(f"n_{split}", 0))):
            kw: dict[str, Any] = {"seed": base + n, "orientation": orients[n % len(orients)]}
            if spacings[n % len(spacings)] is not None:
                kw["spacing"] = tuple(float(s) for s in spacings[n % len(spacings)])
            if pcfg.get("shape_kji"):
                kw["shape_kji"] = tuple(int(s) for s in pcfg["shape_kji"])
            for key in ("fov", "n_lesions"):
                if pcfg.get(key) is not None:
                    kw[key] = pcfg[key]
            out[split].append(kw)
            n += 1
    return out


def _write_phantom(kw: dict[str, Any], img: str, lab: str, man: str, wanted: str) -> None:
    """Generate one phantom and write its NIfTI pair, then its manifest (last: marks it complete)."""
    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom

    ct, label = make_phantom(**kw)
    io.write_volume(ct, img, overwrite=True)
    io.write_volume(label, lab, overwrite=True)
    tmp = Path(man).with_name(f"{Path(man).name}.tmp-{os.getpid()}")
    tmp.write_text(wanted)
    os.replace(tmp, man)


def generate_phantoms(folder: str | Path, pcfg: dict, jobs: int | None = 1) -> dict[str, list[Case]]:
    """Write (or reuse) phantom NIfTI pairs under ``folder``; returns cases per split.

    ``jobs`` > 1 generates missing phantoms in a process pool (``data.prepare_jobs``).
    """
    from .parallel import run_jobs

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specs = phantom_specs(pcfg)
    result: dict[str, list[Case]] = {}
    todo: list[tuple] = []
    for split, kws in specs.items():
        result[split] = []
        for kw in kws:
            cid = f"phantom_{kw['seed']}"
            img, lab, man = (folder / f"{cid}_ct.nii.gz", folder / f"{cid}_label.nii.gz", folder / f"{cid}.json")
            wanted = json.dumps(kw, sort_keys=True, default=list)
            if not (img.exists() and lab.exists() and man.exists() and man.read_text() == wanted):
                todo.append((kw, str(img), str(lab), str(man), wanted))
            result[split].append(Case(cid, cid, str(img), str(lab)))
    run_jobs(_write_phantom, todo, jobs)
    return result
