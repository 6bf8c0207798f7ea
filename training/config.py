"""Training configuration: YAML presets merged over defaults, plus ``a.b=c`` overrides.

One dict drives the whole run (data, stages, train, output); the resolved dict
is written next to the checkpoints so export and evaluation see exactly what
was trained.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

from LiverCTSegmentationLib.engine.errors import LiverSegError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(LiverSegError):
    """The training configuration is missing, malformed or inconsistent."""

    code = "config"


DEFAULTS: dict[str, Any] = {
    "name": "liverct",
    "data": {
        "kind": "phantom",          # lits | msd | generic | folder | list | pairs | phantom
        "root": None,
        "task": "liver_tumor",      # liver_tumor | liver | lung_tumor
        "label_mapping": None,      # None -> the task's mapping (F1 labels.py)
        "split_file": None,         # default <run_dir>/split.json
        "split": {"val_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
        "cache_dir": None,          # default <run_dir>/cache
        "cache_hash_files": False,  # key cache entries on file SHA256 (portable) instead of size+mtime
        "prepare_jobs": 1,          # processes for phantom generation and stage caching (0 = all cores)
        "cases": [],                # kind=list/pairs: [{"image": ..., "label": ...}]
        "phantom": {"n_train": 8, "n_val": 2, "n_test": 2, "seed": 1000, "shape_kji": None,
                    "spacings": [[0.8, 0.8, 2.0], [0.7, 0.7, 1.5], [1.0, 1.0, 2.5]],
                    "orientations": ["LPS", "RAS", "random"]},
    },
    "stages": {},
    "train": {
        "epochs": 50,
        "iterations_per_epoch": 100,
        "batch_size": 2,
        "optimizer": "adamw",       # adamw | adam
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "schedule": "cosine",       # cosine | poly | plateau | constant
        "warmup_iterations": 0,
        "poly_power": 0.9,
        "loss": "dice_ce",          # ce | dice | dice_ce | focal | bce
        "class_weights": None,
        "fg_oversample": 0.5,       # probability that a patch is centred on foreground
        "tumor_oversample": 0.3,    # probability that a patch is centred on tumour (fine/lung)
        "augmentation": {
            "enabled": True,
            "rotate_deg": 15.0, "scale": 0.1, "affine_prob": 0.3,
            "flip_axes": [0, 1],    # kji axes; 2 (i, left-right) is off by default: liver side matters
            "flip_prob": 0.1,
            "elastic_prob": 0.0,
            "intensity_scale": 0.1, "intensity_shift": 0.1, "intensity_prob": 0.3,
            "gamma": [0.8, 1.25], "gamma_prob": 0.2,
            "noise_std": 0.05, "noise_prob": 0.2,
            "lowres_prob": 0.1,
        },
        "seed": 0,
        "deterministic": True,
        "amp": "auto",              # auto | bf16 | fp16 | off (CPU only with use_bf16)
        "use_bf16": False,
        "early_stopping_patience": 10,
        "val_every": 1,
        "num_workers": 0,
        "threads": None,
        "device": "auto",
        "max_val_cases": None,
        "stages": None,             # subset of stages to train, default all
        "patch_size": None,         # training patch (k, j, i); default the stage's (inference) patch_size
        "init_weights": None,       # bundle folder to warm-start each stage from (same architecture)
        # A stage may override any of these in stages.<name>.train (e.g. fine: tumour oversampling).
    },
    "output": {
        "run_dir": "runs/liverct",
        "mlflow": True,
        "mlflow_tracking_uri": None,   # default file:<run_dir>/mlruns
        "experiment": "liverct",
        "plots": True,
    },
}


def deep_merge(base: dict, extra: dict) -> dict:
    """Recursively merge ``extra`` into a copy of ``base`` (dicts merge, the rest replaces)."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def preset_path(name_or_path: str | Path) -> Path:
    """A preset name (``phantom``) or a path to a YAML file -> an existing path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    presets = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config '{name_or_path}' not found: give a YAML path or one of the presets: {presets}")


def apply_override(cfg: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like section.key=value (e.g. train.epochs=2)")
    dotted, raw = override.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{override}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{override}': value is not valid YAML ({exc})") from None
    node = cfg
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def load_config(path: str | Path, overrides: Iterable[str] | None = None) -> dict:
    """Load a preset/YAML file, merge it over DEFAULTS, apply overrides and validate."""
    p = preset_path(path)
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping with data/stages/train/output")
    cfg = deep_merge(DEFAULTS, loaded)
    for ov in overrides or []:
        apply_override(cfg, ov)
    cfg["config_source"] = str(p)
    validate_config(cfg)
    return cfg


def trained_stages(cfg: dict) -> dict[str, dict]:
    """The stages this run trains (``train.stages`` subset, default all); unknown names are an error.

    Validation checks only these: a stage excluded by ``train.stages`` (e.g. the fine stage of a
    coarse-only run with ``train.loss=bce``) must not make the run fail.
    """
    stages = cfg.get("stages") or {}
    if not stages:
        raise ConfigError("config has no stages: define stages.coarse (and optionally stages.fine)")
    subset = (cfg.get("train") or {}).get("stages")
    if not subset:
        return dict(stages)
    if isinstance(subset, str):
        subset = [s.strip() for s in subset.split(",") if s.strip()]
    unknown = [s for s in subset if s not in stages]
    if unknown:
        raise ConfigError(f"train.stages names {unknown} but the config defines only {sorted(stages)}")
    return {n: st for n, st in stages.items() if n in subset}


def validate_config(cfg: dict) -> None:
    """Reject configs that would fail late (after minutes of caching) with a clear message."""
    stages = trained_stages(cfg)
    for name, st in stages.items():
        for key in ("architecture", "spacing", "patch_size", "intensity"):
            if key not in st:
                raise ConfigError(f"stages.{name} is missing '{key}'")
        arch = st["architecture"]
        if len(st["patch_size"]) != 3:
            raise ConfigError(f"stages.{name}.patch_size must be 3 values (k, j, i); 2D networks use (1, H, W)")
        if arch.get("name") == "unet2d" and int(st["patch_size"][0]) != 1:
            raise ConfigError(f"stages.{name}: unet2d works on slices, patch_size must be (1, H, W)")
        if len(st["spacing"]) != 3:
            raise ConfigError(f"stages.{name}.spacing must be 3 values (i, j, k) in mm")
        n_out = int(arch.get("out_channels", 2))
        c2l = st.get("class_to_label", list(range(n_out)))
        if len(c2l) != n_out:
            raise ConfigError(f"stages.{name}.class_to_label has {len(c2l)} entries but out_channels={n_out}")
    t = cfg["train"]
    for name, st in stages.items():
        t_stage = deep_merge(t, st.get("train") or {})
        if t_stage["loss"] == "bce" and int(st["architecture"].get("out_channels", 2)) != 2:
            raise ConfigError(f"stages.{name}: loss bce needs out_channels=2 (binary task)")
    if t["loss"] not in ("ce", "dice", "dice_ce", "focal", "bce"):
        raise ConfigError(f"train.loss '{t['loss']}' unknown: use ce, dice, dice_ce, focal or bce")
    if t["schedule"] not in ("cosine", "poly", "plateau", "constant"):
        raise ConfigError(f"train.schedule '{t['schedule']}' unknown: use cosine, poly, plateau or constant")
    if int(t["epochs"]) < 1 or int(t["iterations_per_epoch"]) < 1 or int(t["batch_size"]) < 1:
        raise ConfigError("train.epochs, train.iterations_per_epoch and train.batch_size must be >= 1")
    kinds = ("lits", "msd", "generic", "folder", "list", "pairs", "phantom")
    if cfg["data"]["kind"] not in kinds:
        raise ConfigError(f"data.kind '{cfg['data']['kind']}' unknown: use one of {', '.join(kinds)}")
    if cfg["data"]["kind"] not in ("phantom", "list", "pairs") and not cfg["data"].get("root"):
        raise ConfigError(f"data.root is not set for data.kind '{cfg['data']['kind']}': add data.root=/path/to/data")


def save_config(cfg: dict, path: str | Path) -> Path:
    """Write the resolved config atomically (YAML)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    os.replace(tmp, path)
    return path


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": v} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
