"""Model bundles: a folder with ``model.json`` and one weights file per stage.

Safety rules (a bundle may come from the internet):
- the SHA256 of every weights file is checked against ``model.json`` before the
  bytes are deserialised (the hash is computed on the very bytes that are then
  parsed, so the file cannot change in between);
- weights are safetensors (no code), or ``.pt`` read only with
  ``torch.load(weights_only=True)`` (refuses arbitrary pickled objects);
- the state dict must match the declared architecture exactly (strict);
  ``ModelBundle.load(..., check_weights=True)`` checks that for every stage up
  front (a batch refuses a bad bundle before its first case), plain ``load``
  stays torch-free (a resumed batch may never build a network);
- values that cannot work (absurd patch sizes or spacings, no background
  class, several input channels) and a window that cannot fit this machine's
  memory are refused at load;
- zip archives are extracted refusing absolute paths, ``..`` and symlinks.

See docs/ARCHITECTURE.md for the ``model.json`` format.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import stat
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from .errors import BundleError

FORMAT_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
MAX_ZIP_BYTES = 4 * 1024**3
# Limits on model.json values: far above any real model (patches of 96x128x128,
# 512x512 slices, 1.5-6 mm), far below what would exhaust any machine.
MAX_PATCH_AXIS = 512
MAX_PATCH_VOXELS = 256 ** 3
MODEL_SPACING_MM = (0.05, 20.0)  # the plausible range of an input CT (checks.py)
MAX_NETWORK_CHANNELS = 2048


# ------------------------------------------------------------------ helpers
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------- validation
def _fail(where: str, msg: str) -> BundleError:
    return BundleError(f"Invalid model description ({where}): {msg}")


def _vec3(value: Any, where: str, key: str, integer: bool = False) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise _fail(where, f"'{key}' must be a list of 3 numbers, got {value!r}.")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise _fail(where, f"'{key}' values must be positive numbers, got {value!r}.")
        if integer and int(v) != v:
            raise _fail(where, f"'{key}' values must be whole numbers, got {value!r}.")
        out.append(int(v) if integer else float(v))
    return tuple(out)


def validate_description(desc: Any, require_weights: bool = True) -> None:
    """Raise BundleError with a specific message if ``desc`` is not a valid model.json."""
    from .networks import ARCHITECTURES, required_divisor

    if not isinstance(desc, dict):
        raise _fail("model.json", "the top level must be a JSON object.")
    for key in ("format_version", "name", "version", "labels", "stages"):
        if key not in desc:
            raise _fail("model.json", f"required key '{key}' is missing.")
    if desc["format_version"] != FORMAT_VERSION:
        raise BundleError(
            f"Model format version {desc['format_version']!r} is not supported by this version "
            f"(supports {FORMAT_VERSION}). Update LiverCTSegmentation or use a compatible model."
        )
    if not isinstance(desc["name"], str) or not desc["name"].strip():
        raise _fail("model.json", "'name' must be a non-empty string.")
    labels = desc["labels"]
    if not isinstance(labels, list) or not labels:
        raise _fail("labels", "'labels' must be a non-empty list.")
    seen: set[int] = set()
    for lab in labels:
        if not isinstance(lab, dict) or "value" not in lab or "name" not in lab:
            raise _fail("labels", f"each label needs 'value' and 'name', got {lab!r}.")
        v = lab["value"]
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 255:
            raise _fail("labels", f"label value {v!r} must be an integer in 1..255.")
        if v in seen:
            raise _fail("labels", f"label value {v} is used twice.")
        seen.add(v)
        if "color" in lab:
            c = lab["color"]
            if not isinstance(c, list) or len(c) != 3 or not all(isinstance(x, int) and 0 <= x <= 255 for x in c):
                raise _fail("labels", f"label {lab['name']!r} color must be 3 integers 0..255.")
    stages = desc["stages"]
    if not isinstance(stages, dict) or "coarse" not in stages:
        raise _fail("stages", "'stages' must be an object with at least a 'coarse' stage.")
    for sname, st in stages.items():
        where = f"stage '{sname}'"
        if sname not in ("coarse", "fine"):
            raise _fail(where, "stage names must be 'coarse' or 'fine'.")
        if not isinstance(st, dict):
            raise _fail(where, "must be an object.")
        req = ["architecture", "spacing", "patch_size", "intensity", "class_to_label"]
        if require_weights:
            req += ["weights", "sha256"]
        for key in req:
            if key not in st:
                raise _fail(where, f"required key '{key}' is missing.")
        arch = st["architecture"]
        if not isinstance(arch, dict) or "name" not in arch or "out_channels" not in arch:
            raise _fail(where, "'architecture' needs 'name' and 'out_channels'.")
        if arch["name"] not in ARCHITECTURES:
            raise BundleError(
                f"Model {where} uses unknown network '{arch['name']}' (known: {', '.join(ARCHITECTURES)}). "
                "Update LiverCTSegmentation or use a model made for this version."
            )
        _check_architecture(arch, where)
        spacing = _vec3(st["spacing"], where, "spacing")
        if not all(MODEL_SPACING_MM[0] <= v <= MODEL_SPACING_MM[1] for v in spacing):
            raise _fail(where, f"'spacing' {list(spacing)} mm is outside {MODEL_SPACING_MM[0]}-"
                               f"{MODEL_SPACING_MM[1]} mm (units in m or um?): fix model.json.")
        patch = _vec3(st["patch_size"], where, "patch_size", integer=True)
        _check_patch_size(arch, patch, where)
        div = required_divisor(arch)
        if arch["name"] == "unet2d":
            if patch[0] != 1:
                raise _fail(where, "a 2D network needs patch_size [1, H, W].")
            check = patch[1:]
        else:
            check = patch
        if any(p % div for p in check):
            raise _fail(where, f"patch_size {list(patch)} must be divisible by {div} for this network.")
        if st.get("orientation", "native") not in ("native", "canonical"):
            raise _fail(where, f"'orientation' must be 'native' or 'canonical', got {st.get('orientation')!r}.")
        inten = st["intensity"]
        if not isinstance(inten, dict) or not all(k in inten for k in ("clip", "mean", "std")):
            raise _fail(where, "'intensity' needs 'clip' [low, high], 'mean' and 'std'.")
        clip = inten["clip"]
        if not (isinstance(clip, list) and len(clip) == 2 and all(isinstance(x, (int, float)) for x in clip)
                and clip[0] < clip[1]):
            raise _fail(where, f"intensity 'clip' must be [low, high] with low < high, got {clip!r}.")
        if not isinstance(inten["std"], (int, float)) or not inten["std"] > 0:
            raise _fail(where, "intensity 'std' must be positive.")
        c2l = st["class_to_label"]
        if not isinstance(c2l, list) or len(c2l) != int(arch["out_channels"]):
            raise _fail(where, f"'class_to_label' must list one label per network output "
                               f"({arch['out_channels']}), got {c2l!r}.")
        for v in c2l:
            if isinstance(v, bool) or not isinstance(v, int) or (v != 0 and v not in seen):
                raise _fail(where, f"class_to_label value {v!r} is neither 0 nor a declared label value.")
        if 0 not in c2l:  # every voxel would get a label: the whole image would be "liver"
            raise _fail(where, f"class_to_label {c2l} maps no network output to 0 (background).")
        if "margin_mm" in st and (not isinstance(st["margin_mm"], (int, float)) or st["margin_mm"] < 0):
            raise _fail(where, "'margin_mm' must be a non-negative number.")
        if require_weights:
            w = st["weights"]
            if not isinstance(w, str) or not w.endswith(WEIGHT_SUFFIXES):
                raise _fail(where, f"'weights' must name a {'/'.join(WEIGHT_SUFFIXES)} file, got {w!r}.")
            p = PurePosixPath(w.replace("\\", "/"))
            if p.is_absolute() or len(p.parts) != 1 or w.startswith("."):
                raise _fail(where, f"'weights' must be a plain file name inside the bundle folder, got {w!r}.")
            h = st["sha256"]
            if not isinstance(h, str) or len(h) != 64 or any(ch not in "0123456789abcdef" for ch in h.lower()):
                raise _fail(where, "'sha256' must be 64 hexadecimal characters.")


def _check_architecture(arch: dict, where: str) -> None:
    """Values the engine cannot run: it feeds one CT channel and needs background + a class."""
    if arch.get("in_channels", 1) != 1:
        raise _fail(where, f"the network takes {arch.get('in_channels')} input channels; the engine feeds "
                           "one input channel (the CT).")
    out = arch["out_channels"]
    if isinstance(out, bool) or not isinstance(out, int) or not 2 <= out <= 255:
        raise _fail(where, f"'out_channels' must be an integer of at least 2 (background and one class), "
                           f"got {out!r}.")
    if "channels" in arch:
        ch = arch["channels"]
        if (not isinstance(ch, list) or not 1 <= len(ch) <= 8
                or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= MAX_NETWORK_CHANNELS
                           for c in ch)):
            raise _fail(where, f"network 'channels' must be 1 to 8 integers in 1..{MAX_NETWORK_CHANNELS}, "
                               f"got {ch!r}.")


def window_bytes(arch: dict, patch: tuple) -> int:
    """Lower-bound memory (bytes) of one network window of ``patch`` voxels (k, j, i)."""
    from .networks import activation_bytes_per_voxel

    return int(math.prod(patch) * activation_bytes_per_voxel(arch))


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n < 1e11 else f"{n / 1e9:,.0f} GB"


def _check_patch_size(arch: dict, patch: tuple, where: str) -> None:
    if max(patch) <= MAX_PATCH_AXIS and math.prod(patch) <= MAX_PATCH_VOXELS:
        return
    raise BundleError(
        f"model.json asks for patch size {'x'.join(map(str, patch))} in {where}, which needs "
        f"~{_gb(window_bytes(arch, patch))} per window: this bundle is unusable (this version runs patches of at "
        f"most {MAX_PATCH_AXIS} voxels per axis and {round(MAX_PATCH_VOXELS ** (1 / 3))}^3 in total): fix "
        "model.json."
    )


def check_window_memory(stages: dict, available_bytes: Optional[int] = None,
                        total_bytes: Optional[int] = None) -> None:
    """Refuse a bundle whose smallest window (one training patch) cannot fit in memory.

    BundleError when it exceeds the machine's physical memory (the bundle can never run
    here), ResourceError when only the memory free right now is too small.
    """
    if available_bytes is None or total_bytes is None:
        import psutil

        vm = psutil.virtual_memory()
        available_bytes = vm.available if available_bytes is None else available_bytes
        total_bytes = vm.total if total_bytes is None else total_bytes
    from .errors import ResourceError

    for st in stages.values():
        need = window_bytes(st.architecture, st.patch_size)
        size = "x".join(map(str, st.patch_size))
        if need > total_bytes:
            raise BundleError(
                f"model.json asks for patch size {size} in stage '{st.name}', which needs ~{_gb(need)} per "
                f"window; this computer has {_gb(total_bytes)} of memory, so this bundle is unusable on this "
                "machine: fix model.json (a smaller patch_size) or use a computer with more memory."
            )
        if need > available_bytes:
            raise ResourceError(
                f"Stage '{st.name}' of the model needs ~{_gb(need)} of memory per window (patch size {size}) "
                f"but only {_gb(available_bytes)} is free. Close other programs and retry."
            )


# -------------------------------------------------------------- data types
@dataclass
class StageSpec:
    name: str
    architecture: dict
    spacing: tuple  # mm, (i, j, k)
    patch_size: tuple  # voxels, (k, j, i)
    intensity: dict
    class_to_label: list
    margin_mm: float
    weights_path: Path
    sha256: str
    #: "native" (the input's own axis order) or "canonical" (axes reordered/flipped towards LPS).
    orientation: str = "native"

    @classmethod
    def from_dict(cls, name: str, st: dict, folder: Path) -> "StageSpec":
        return cls(
            name=name,
            architecture=dict(st["architecture"]),
            spacing=tuple(float(s) for s in st["spacing"]),
            patch_size=tuple(int(p) for p in st["patch_size"]),
            intensity=dict(st["intensity"]),
            class_to_label=[int(v) for v in st["class_to_label"]],
            margin_mm=float(st.get("margin_mm", 20.0)),
            weights_path=folder / st["weights"],
            sha256=str(st["sha256"]).lower(),
            orientation=str(st.get("orientation", "native")),
        )

    @property
    def n_classes(self) -> int:
        return int(self.architecture["out_channels"])


@dataclass
class ModelBundle:
    path: Path
    description: dict
    stages: dict
    _cache: dict = field(default_factory=dict, repr=False)
    # network() may be called from a warm-up thread (warmup.py) while a case starts
    _lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)

    # Convenience views of model.json
    @property
    def name(self) -> str:
        return str(self.description["name"])

    @property
    def version(self) -> str:
        return str(self.description["version"])

    @property
    def demo(self) -> bool:
        return bool(self.description.get("demo", False))

    @property
    def labels(self) -> list:
        return list(self.description["labels"])

    @property
    def postprocess(self) -> dict:
        return dict(self.description.get("postprocess", {}))

    @property
    def stage_names(self) -> list:
        return [s for s in ("coarse", "fine") if s in self.stages]

    @classmethod
    def load(cls, folder: os.PathLike, verify: bool = True, check_weights: bool = False) -> "ModelBundle":
        """Read and validate ``folder/model.json``; verify every weights file's SHA256 and that a
        window fits in memory. ``check_weights``: also parse every stage's weights and match them
        to its architecture (imports torch; see ``check_weights``)."""
        folder = Path(folder)
        mj = folder / "model.json"
        if not folder.is_dir():
            raise BundleError(f"Model folder '{folder}' does not exist. Check the path or reinstall the model.")
        if not mj.is_file():
            raise BundleError(f"'{folder}' is not a model bundle: model.json is missing.")
        try:
            desc = json.loads(mj.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"model.json in '{folder}' is not valid JSON ({exc}). Re-download the model.") from exc
        validate_description(desc)
        stages = {n: StageSpec.from_dict(n, s, folder) for n, s in desc["stages"].items()}
        for st in stages.values():
            if not st.weights_path.is_file():
                raise BundleError(
                    f"Weights file '{st.weights_path.name}' of stage '{st.name}' is missing from '{folder}'. "
                    "Re-download or reinstall the model."
                )
            if verify:
                _check_hash(st, sha256_file(st.weights_path))
        check_window_memory(stages)
        bundle = cls(path=folder, description=desc, stages=stages)
        if check_weights:
            bundle.check_weights()
        return bundle

    def check_weights(self) -> None:
        """Parse every stage's weights safely and match them to its architecture (BundleError naming
        the first mismatching tensor). Builds the networks on torch's meta device: no memory, no cache."""
        import torch

        for name, st in self.stages.items():
            state = load_state_dict(st)
            with torch.device("meta"):
                net = _build(st.architecture)
            _check_state(net.state_dict(), state, f"stage '{name}' of model '{self.name}'")

    def network(self, stage: str, device: Any = "cpu"):
        """The stage's network in eval mode with verified weights (cached per device)."""
        import torch

        if stage not in self.stages:
            raise BundleError(f"Model '{self.name}' has no stage '{stage}' (has {', '.join(self.stage_names)}).")
        key = (stage, str(torch.device(device)))
        with self._lock:
            if key not in self._cache:
                st = self.stages[stage]
                state = load_state_dict(st)
                net = _build_and_load(st.architecture, state, f"stage '{stage}' of model '{self.name}'")
                net.eval()
                self._cache[key] = net.to(device)
            return self._cache[key]


def _check_hash(st: StageSpec, actual: str) -> None:
    if actual != st.sha256:
        raise BundleError(
            f"Weights file '{st.weights_path.name}' of stage '{st.name}' is corrupted or has been tampered with "
            f"(SHA256 {actual[:12]}... does not match the model description). Re-download the model."
        )


def load_state_dict(st: StageSpec) -> dict:
    """Read the weights bytes once, verify SHA256 on those bytes, then deserialise safely."""
    import torch

    try:
        data = st.weights_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"Cannot read weights of stage '{st.name}': {exc}. Reinstall the model.") from exc
    _check_hash(st, sha256_bytes(data))
    suffix = st.weights_path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load as st_load

            state = st_load(data)
        else:
            with warnings.catch_warnings():  # torch's pickle-protocol notes are noise for a refused file
                warnings.simplefilter("ignore")
                state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any parse failure is a bad bundle
        # ``from None``: torch's message advises weights_only=False, i.e. running the code; never show it.
        raise BundleError(
            f"Weights file '{st.weights_path.name}' of stage '{st.name}' is not a plain weights file (it contains "
            "Python code or objects, or is damaged); it was refused without running. Use a bundle from a "
            "trusted source."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"Weights of stage '{st.name}' are not a state dict of tensors.")
    return state


def _build(arch: dict):
    from .networks import build_network

    return build_network(arch)


def _check_state(expected: dict, state: dict, what: str) -> None:
    """BundleError naming the first tensor (in the network's order) that is missing or mis-shaped."""
    hint = "The model description and weights belong to different models; re-download the model."
    for k, v in expected.items():
        if k not in state:
            raise BundleError(f"The weights of {what} do not match its architecture: tensor '{k}' is missing "
                              f"({len(set(expected) - set(state))} missing in all). {hint}")
        if tuple(state[k].shape) != tuple(v.shape):
            raise BundleError(f"The weights of {what} do not match its architecture: '{k}' has shape "
                              f"{tuple(state[k].shape)}, expected {tuple(v.shape)}. {hint}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise BundleError(f"The weights of {what} do not match its architecture: unexpected tensor '{extra[0]}' "
                          f"({len(extra)} unexpected in all). {hint}")


def _build_and_load(arch: dict, state: dict, what: str):
    net = _build(arch)
    _check_state(net.state_dict(), state, what)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # pragma: no cover - dtype oddities
        raise BundleError(f"The weights of {what} cannot be loaded: {str(exc)[:300]}") from exc
    return net


# ------------------------------------------------------------------- saving
def save_bundle(folder: os.PathLike, description: dict, state_dicts: dict, overwrite: bool = False) -> Path:
    """Write ``<stage>.safetensors`` for each stage and ``model.json`` (atomically).

    Fills ``stages[s]["weights"]`` and ``["sha256"]``. The state dicts are
    checked against the architectures first (strict), so an inconsistent
    bundle is never written. Refuses a non-empty folder unless ``overwrite``.
    """
    from safetensors.torch import save as st_save

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BundleError(f"'{folder}' exists and is not a folder.")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise BundleError(f"Folder '{folder}' is not empty; choose another folder or allow overwriting.")
    desc = copy.deepcopy(description)
    desc.setdefault("format_version", FORMAT_VERSION)
    validate_description(desc, require_weights=False)
    if set(state_dicts) != set(desc["stages"]):
        raise BundleError(
            f"Weights given for stages {sorted(state_dicts)} but the description has {sorted(desc['stages'])}."
        )
    blobs = {}
    for sname, state in state_dicts.items():
        st = desc["stages"][sname]
        clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
        _build_and_load(st["architecture"], clean, f"stage '{sname}'")
        # One metadata key: safetensors stores metadata in a hash map, so several keys come out
        # in random order and the same weights would hash differently on every export.
        data = st_save(clean, metadata={"liverct_stage": f"{desc['name']}:{sname}"})
        st["weights"] = f"{sname}.safetensors"
        st["sha256"] = sha256_bytes(data)
        blobs[st["weights"]] = data
    validate_description(desc)
    folder.mkdir(parents=True, exist_ok=True)
    for fname, data in blobs.items():
        _atomic_write_bytes(folder / fname, data)
    _atomic_write_bytes(folder / "model.json", (json.dumps(desc, indent=2) + "\n").encode("utf-8"))
    return folder


# ---------------------------------------------------------------------- zip
def _safe_member(info: zipfile.ZipInfo) -> Optional[PurePosixPath]:
    name = info.filename.replace("\\", "/")
    mode = (info.external_attr >> 16) & 0xFFFF
    if stat.S_ISLNK(mode):
        raise BundleError(f"Model archive contains a symbolic link '{info.filename}': refused for safety.")
    p = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or p.is_absolute():
        raise BundleError(f"Model archive contains an absolute path '{info.filename}': refused for safety.")
    if any(part == ".." for part in p.parts):
        raise BundleError(f"Model archive contains a path leaving its folder '{info.filename}': refused for safety.")
    if info.is_dir():
        return None
    return p


def load_bundle_zip(zip_path: os.PathLike, dest_dir: os.PathLike) -> ModelBundle:
    """Safely extract a zipped bundle into ``dest_dir`` and load it.

    The archive may hold the bundle at its root or inside one top folder.
    Every member is checked before anything is written.
    """
    zip_path, dest = Path(zip_path), Path(dest_dir)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"'{zip_path}' is not a readable zip archive ({exc}). Re-download the model.") from exc
    with zf:
        infos = zf.infolist()
        members = [(i, _safe_member(i)) for i in infos]
        total = sum(i.file_size for i in infos)
        if total > MAX_ZIP_BYTES:
            raise BundleError(f"Model archive '{zip_path.name}' would extract to {total / 1e9:.1f} GB: refused.")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for info, rel in members:
            if rel is None:
                continue
            target = (root / rel).resolve()
            if root not in target.parents:
                raise BundleError(f"Model archive member '{info.filename}' would leave the target folder: refused.")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
    if (dest / "model.json").is_file():
        return ModelBundle.load(dest)
    subs = [p for p in dest.iterdir() if p.is_dir() and (p / "model.json").is_file()]
    if len(subs) == 1:
        return ModelBundle.load(subs[0])
    raise BundleError(f"Model archive '{zip_path.name}' does not contain a model.json.")
