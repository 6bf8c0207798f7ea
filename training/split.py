"""Patient-level, seeded train/val/test split stored as JSON and reused.

Why: the test set must stay the test set for the life of a project. The split
is made once (patients sorted, then permuted with ``numpy.random.default_rng(seed)``,
so the result depends only on the patient ids and the seed, never on listing
order), written to JSON, and afterwards only *read*. If the dataset's case
list changes, loading raises :class:`SplitError` instead of silently
re-shuffling; ``--force`` rewrites it deliberately.

All scans of one patient go to the same subset. Training and model selection
use :func:`train_val_cases` only; the test cases are read solely by
``evaluate --subset test``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from LiverCTSegmentationLib.engine.errors import LiverSegError

from .datasets import Case

SUBSETS = ("train", "val", "test")


class SplitError(LiverSegError, ValueError):
    """The stored split does not fit the current data, or is malformed (one-line CLI error)."""

    code = "split"


def case_list_sha256(cases: Sequence[Case]) -> str:
    text = "\n".join(f"{c.case_id}\t{c.patient_id}" for c in sorted(cases, key=lambda c: c.case_id))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or f.sum() <= 0:
        raise SplitError(f"fractions must be three non-negative numbers (train, val, test), got {list(fractions)}")
    f = f / f.sum()
    n_val = int(round(n * f[1]))
    n_test = int(round(n * f[2]))
    # Keep at least one patient in each non-zero subset when possible.
    if f[1] > 0 and n_val == 0 and n >= 3:
        n_val = 1
    if f[2] > 0 and n_test == 0 and n >= 3:
        n_test = 1
    n_train = n - n_val - n_test
    if n_train < 1:
        raise SplitError(f"{n} patients are too few for fractions {list(fractions)}")
    return n_train, n_val, n_test


def make_split(cases: Sequence[Case], seed: int = 0, fractions: Sequence[float] = (0.7, 0.15, 0.15)) -> dict[str, Any]:
    """A new split dict (not written). Patients are shuffled, not cases."""
    if not cases:
        raise SplitError("no cases to split")
    patients = sorted({c.patient_id for c in cases})
    n_train, n_val, _ = _counts(len(patients), fractions)
    order = np.random.default_rng(int(seed)).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    assign = {p: "train" for p in shuffled[:n_train]}
    assign.update({p: "val" for p in shuffled[n_train:n_train + n_val]})
    assign.update({p: "test" for p in shuffled[n_train + n_val:]})
    return _split_record(cases, assign, seed=int(seed), fractions=[float(x) for x in fractions])


def _split_record(cases: Sequence[Case], assign: Mapping[str, str], **header: Any) -> dict[str, Any]:
    """The stored split: header, the case records and each subset's sorted case ids (patient -> subset)."""
    out: dict[str, Any] = {
        "format_version": 1, **header, "level": "patient",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "case_list_sha256": case_list_sha256(cases),
        "cases": {c.case_id: c.to_dict() for c in sorted(cases, key=lambda c: c.case_id)},
    }
    for sub in SUBSETS:
        out[sub] = sorted(c.case_id for c in cases if assign[c.patient_id] == sub)
    return out


def explicit_split(cases: Sequence[Case], val: Sequence[str] = (), test: Sequence[str] = ()) -> dict[str, Any]:
    """A split with named validation/test cases (e.g. one leave-one-out fold); the rest train.

    Names are case ids; every case of the same patient follows its named case, so a
    patient never straddles subsets. An unknown name is an error.
    """
    if not cases:
        raise SplitError("no cases to split")
    by_id = {c.case_id: c for c in cases}
    unknown = sorted(n for n in set(val) | set(test) if n not in by_id)
    if unknown:
        raise SplitError(f"split names unknown cases {unknown}; known: {sorted(by_id)[:20]}")
    test_p = {by_id[n].patient_id for n in test}
    val_p = {by_id[n].patient_id for n in val}
    if test_p & val_p:
        raise SplitError(f"patients {sorted(test_p & val_p)} are named for both val and test")
    assign = {c.patient_id: "test" if c.patient_id in test_p else "val" if c.patient_id in val_p else "train"
              for c in cases}
    if not any(v == "train" for v in assign.values()):
        raise SplitError("the named val/test cases leave nothing to train on")
    return _split_record(cases, assign, seed=None, fractions=None, explicit=True)


def write_split(split: Mapping[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, p)
    return p


def read_split(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        split = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise SplitError(f"split file {p} not found; create it with `liverseg-train split`") from e
    except ValueError as e:
        raise SplitError(f"split file {p} is not valid JSON ({e})") from e
    for s in SUBSETS:
        if s not in split:
            raise SplitError(f"split file {p} has no {s!r} list")
    ids = [i for s in SUBSETS for i in split[s]]
    if len(ids) != len(set(ids)):
        raise SplitError(f"split file {p}: a case appears in more than one subset")
    return split


def load_or_create_split(
    path: str | Path,
    cases: Sequence[Case],
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    force: bool = False,
    explicit: tuple[Sequence[str], Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Reuse the split at ``path`` if it matches ``cases``; create it if absent.

    A stored split whose case list differs from ``cases`` raises SplitError
    (never a silent re-shuffle) unless ``force``; a different seed or fractions
    than the stored ones is also an error unless ``force``.
    """
    p = Path(path)
    if explicit is not None:
        wanted = explicit_split(cases, val=explicit[0], test=explicit[1])
        if p.exists() and not force:
            split = read_split(p)
            if any(sorted(split[s]) != wanted[s] for s in SUBSETS):
                raise SplitError(f"{p} holds a different split than the config's named val/test cases; "
                                 "use another run folder or re-split deliberately with --force")
            return split
        write_split(wanted, p)
        return wanted
    if p.exists() and not force:
        split = read_split(p)
        stored = set(split.get("cases") or [i for s in SUBSETS for i in split[s]])
        current = {c.case_id for c in cases}
        if stored != current:
            added, removed = sorted(current - stored), sorted(stored - current)
            raise SplitError(
                f"the case list changed since {p} was made (added {added[:10]}, removed {removed[:10]}); "
                "keep the data as it was, or re-split deliberately with --force (this changes the test set)"
            )
        if int(split.get("seed", seed)) != int(seed) or (
            split.get("fractions") and not np.allclose(split["fractions"], fractions)
        ):
            raise SplitError(
                f"{p} was made with seed {split.get('seed')} and fractions {split.get('fractions')}, "
                f"not seed {seed} and {list(fractions)}; use the stored split or re-split with --force"
            )
        return split
    split = make_split(cases, seed=seed, fractions=fractions)
    write_split(split, p)
    return split


def subset_cases(split: Mapping[str, Any], subset: str, cases: Sequence[Case] | None = None) -> list[Case]:
    """Cases of ``subset`` (train|val|test|all). Uses ``cases`` if given, else the
    case records stored in the split file."""
    if subset == "all":
        ids = [i for s in SUBSETS for i in split[s]]
    elif subset in SUBSETS:
        ids = list(split[subset])
    else:
        raise SplitError(f"unknown subset {subset!r}; expected train, val, test or all")
    if cases is not None:
        by_id = {c.case_id: c for c in cases}
    else:
        by_id = {k: Case.from_dict(v) for k, v in (split.get("cases") or {}).items()}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SplitError(f"split lists cases with no files: {missing[:10]}")
    return sorted((by_id[i] for i in ids), key=lambda c: c.case_id)


def train_val_cases(split: Mapping[str, Any], cases: Sequence[Case] | None = None) -> tuple[list[Case], list[Case]]:
    """The only cases training and model selection may see."""
    return subset_cases(split, "train", cases), subset_cases(split, "val", cases)


# ---------------------------------------------------------------- command
def split_path(cfg: Mapping[str, Any]) -> str:
    """``data.split_file``, default ``<output.run_dir>/split.json``."""
    data = cfg.get("data") or {}
    if data.get("split_file"):
        return str(data["split_file"])
    run_dir = (cfg.get("output") or {}).get("run_dir")
    return str(Path(run_dir) / "split.json") if run_dir else "split.json"


def split_params(cfg: Mapping[str, Any]) -> tuple[int, tuple[float, float, float]]:
    """(seed, (train, val, test) fractions) from ``data.split: {val_fraction, test_fraction, seed}``."""
    sp = (cfg.get("data") or {}).get("split") or {}
    val, test = float(sp.get("val_fraction", 0.15)), float(sp.get("test_fraction", 0.15))
    return int(sp.get("seed", 0)), (1.0 - val - test, val, test)


def _load_config(path: str | None, overrides: list[str]) -> dict[str, Any]:
    if not path:
        return {}
    try:
        from .config import load_config  # F2's loader (resolves presets/overrides)
    except ImportError:
        load_config = None
    if load_config is not None:
        return load_config(path, overrides)
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def main_split(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="liverseg-train split", description="Make or check the patient-level split.")
    ap.add_argument("--config", help="training config YAML (data section gives kind/root/split file)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=c")
    ap.add_argument("--kind", help="dataset kind (overrides data.kind)")
    ap.add_argument("--root", help="dataset root (overrides data.root)")
    ap.add_argument("--out", help="split JSON path (default data.split_file or split.json)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"))
    ap.add_argument("--force", action="store_true", help="re-split even if the stored split differs (changes the test set)")
    a = ap.parse_args(argv)
    from .datasets import DatasetError, read_dataset

    cfg = _load_config(a.config, a.overrides)
    data = dict(cfg.get("data") or {})
    if a.kind:
        data["kind"] = a.kind
    if a.root:
        data["root"] = a.root
    out = a.out or split_path(cfg)
    seed, fractions = split_params(cfg)
    if a.seed is not None:
        seed = a.seed
    if a.fractions:
        fractions = tuple(a.fractions)
    try:
        cases = read_dataset(data)
        split = load_or_create_split(out, cases, seed=seed, fractions=fractions, force=a.force)
    except (DatasetError, SplitError) as e:
        print(f"error: {e}")
        return 2
    print(f"split {out}: " + ", ".join(f"{s} {len(split[s])}" for s in SUBSETS))
    return 0
