"""Model registry: the bundled default, installed bundles and verified downloads.

Used by the ``liverseg`` CLI and the Slicer module; stdlib + engine only (no
Slicer, no torch at import).

Where models live:
- bundled: ``LiverCTSegmentation/Resources/Models/<name>/`` (shipped with the
  extension), listed in ``Resources/Models/manifest.json``;
- installed: ``user_models_dir()/<name>/`` (downloads land here);
- the manifest also lists downloadable models: ``url``, ``sha256`` and
  ``size_bytes`` of a zip archive holding one bundle.

A download is written to a temporary file next to its destination, checked
against the manifest's size and SHA256, extracted safely into a temporary
folder (``engine.bundle.load_bundle_zip``: no ``..``, absolute paths or
symlinks), loaded/verified, and only then renamed into place. Failures leave
nothing behind.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from .engine.errors import BundleError
from .resource_paths import resources_dir
from .engine.progress import Progress
from .engine.bundle import sha256_file as _sha256_file

MODELS_RESOURCE_DIR = resources_dir() / "Models"
MANIFEST_PATH = MODELS_RESOURCE_DIR / "manifest.json"
ENV_MODELS_DIR = "LIVERCT_MODELS_DIR"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CHUNK = 1 << 16

ManifestArg = Union[None, str, os.PathLike, dict]
ProgressArg = Union[None, Progress, Callable[[float, str], None]]


@dataclass
class ModelInfo:
    name: str
    version: str
    description: str
    status: str  # "bundled" | "installed" | "not downloaded" | "missing"
    path: Optional[Path]  # bundle folder when available locally
    url: Optional[str] = None
    sha256: Optional[str] = None
    size_bytes: Optional[int] = None
    default: bool = False
    demo: bool = False

    @property
    def available(self) -> bool:
        return self.status in ("bundled", "installed")

    def to_dict(self) -> dict:
        """JSON-friendly view (paths as strings) for ``liverseg`` listings."""
        d = asdict(self)
        d["path"] = str(self.path) if self.path is not None else None
        d["available"] = self.available
        return d


# ------------------------------------------------------------------ manifest
def load_manifest(manifest: ManifestArg = None) -> dict:
    """Read and validate the manifest (a path, an already-parsed dict, or the bundled one)."""
    if isinstance(manifest, dict):
        data = manifest
    else:
        path = Path(manifest) if manifest is not None else MANIFEST_PATH
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise BundleError(f"Model manifest '{path}' is missing. Reinstall the extension.") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"Model manifest '{path}' is unreadable ({exc}). Reinstall the extension.") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise BundleError("Model manifest has no 'models' list.")
    seen = set()
    for m in models:
        name = m.get("name") if isinstance(m, dict) else None
        # Names become folder names: refuse anything that could leave the models folder.
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
            raise BundleError(f"Model manifest entry has an invalid name {name!r} (letters, digits, . _ - only).")
        if name in seen:
            raise BundleError(f"Model manifest lists '{name}' twice.")
        seen.add(name)
        if m.get("url"):
            sha, size = m.get("sha256"), m.get("size_bytes")
            if not (isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
                raise BundleError(f"Model manifest entry '{name}' has a url but no valid sha256.")
            if not (isinstance(size, int) and size > 0):
                raise BundleError(f"Model manifest entry '{name}' has a url but no positive size_bytes.")
    if data.get("default") is not None and data["default"] not in seen:
        raise BundleError(f"Model manifest default '{data['default']}' is not one of its models.")
    return data


def _entry(name: str, manifest: ManifestArg) -> Optional[dict]:
    for m in load_manifest(manifest)["models"]:
        if m["name"] == name:
            return m
    return None


def default_model_name(manifest: ManifestArg = None) -> str:
    name = load_manifest(manifest).get("default")
    if not name:
        raise BundleError("Model manifest names no default model.")
    return str(name)


def default_bundle_dir(manifest: ManifestArg = None) -> Path:
    """Folder of the bundled default model (it may not exist in a source checkout)."""
    return MODELS_RESOURCE_DIR / default_model_name(manifest)


def _slicer_cache_dir() -> Optional[Path]:
    """Slicer's cache folder when running inside the Slicer application, else None.

    Looks only at an already imported ``slicer`` module (never imports it), so the
    CLI and ``PythonSlicer`` processes (which have no ``slicer.app``) are unaffected.
    """
    app = getattr(sys.modules.get("slicer"), "app", None)
    cache = getattr(app, "cachePath", None) if app is not None else None
    if callable(cache):
        cache = cache()
    return Path(str(cache)) if cache else None


def user_models_dir() -> Path:
    """Where downloaded models are installed.

    $LIVERCT_MODELS_DIR if set; inside Slicer ``<slicer.app.cachePath>/LiverCTSegmentation/models``
    (where Slicer keeps downloads, cleared with its cache); else the platform cache folder.
    """
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env).expanduser()
    slicer_cache = _slicer_cache_dir()
    if slicer_cache is not None:
        return slicer_cache / "LiverCTSegmentation" / "models"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "liverct-segmentation" / "models"


def _is_bundle(folder: Path) -> bool:
    return (folder / "model.json").is_file()


def _read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------- listing
def list_models(manifest: ManifestArg = None) -> list[ModelInfo]:
    """Manifest entries (with their local status) plus unlisted bundled/installed bundles."""
    data = load_manifest(manifest)
    default = data.get("default")
    out: list[ModelInfo] = []
    known = set()
    for m in data["models"]:
        name = m["name"]
        known.add(name)
        bundled, installed = MODELS_RESOURCE_DIR / name, user_models_dir() / name
        if m.get("bundled") and _is_bundle(bundled):
            status, path = "bundled", bundled
        elif _is_bundle(installed):
            status, path = "installed", installed
        elif m.get("url"):
            status, path = "not downloaded", None
        else:
            status, path = "missing", None
        demo = bool(_read_meta(path).get("demo", m.get("demo", False)) if path else m.get("demo", False))
        out.append(
            ModelInfo(name, str(m.get("version", "")), str(m.get("description", "")), status, path,
                      m.get("url"), m.get("sha256"), m.get("size_bytes"), name == default, demo)
        )
    for status, root in (("bundled", MODELS_RESOURCE_DIR), ("installed", user_models_dir())):
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.name in known or folder.name.startswith(".") or not _is_bundle(folder):
                continue
            known.add(folder.name)
            meta = _read_meta(folder)
            out.append(ModelInfo(folder.name, str(meta.get("version", "")), str(meta.get("description", "")),
                                 status, folder, demo=bool(meta.get("demo", False))))
    return out


def _available_names(manifest: ManifestArg) -> str:
    try:
        infos = list_models(manifest)
    except BundleError:
        return "(none)"
    return ", ".join(f"{i.name} [{i.status}]" for i in infos) or "(none)"


# ----------------------------------------------------------------- resolving
def _bundle_in(folder: Path) -> Optional[Path]:
    if _is_bundle(folder):
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and _is_bundle(p)] if folder.is_dir() else []
    return subs[0] if len(subs) == 1 else None



def _extract_zip_atomically(zip_path: Path, final: Path, expected_name: Optional[str] = None) -> Path:
    """Extract + verify a zipped bundle into a temp folder, then rename it to ``final``."""
    from .engine.bundle import load_bundle_zip

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        bundle = load_bundle_zip(zip_path, tmp)
        if expected_name is not None and bundle.name != expected_name:
            raise BundleError(
                f"The archive for '{expected_name}' holds model '{bundle.name}': wrong file, not installed."
            )
        src = Path(bundle.path)
        try:
            os.replace(src, final)
        except OSError:
            if not _is_bundle(final):  # not "someone else installed it meanwhile"
                raise
        return final
    except OSError as exc:
        raise BundleError(f"Could not install the model into '{final}' ({exc}). Check disk space and permissions.") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _registered_folder(name: str, manifest: ManifestArg) -> Optional[Path]:
    """The bundled/installed folder of registry model ``name`` (None if ``name`` is not a bare model name
    or no such model is registered); a listed but absent model gives its would-be bundled folder."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        return None
    for folder in (MODELS_RESOURCE_DIR / name, user_models_dir() / name):
        if _is_bundle(folder):
            return folder
    return MODELS_RESOURCE_DIR / name if _entry(name, manifest) is not None else None


def resolve_model(name_or_path: Union[str, os.PathLike, None] = None, manifest: ManifestArg = None) -> Path:
    """Bundle folder for a folder path, a ``.zip`` path, or a model name (None = default).

    A zip is extracted once into ``user_models_dir()/.unpacked/<stem>-<sha>``.
    Names are looked up bundled first, then installed. Raises ``BundleError``
    naming the available models when nothing matches. A bare name that is also
    a folder here: that folder if it holds a bundle, else ``BundleError`` naming
    the ambiguity. The default (None) is always looked up as a name.
    """
    if name_or_path is None:
        return _resolve_name(default_model_name(manifest), manifest)
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        found = _bundle_in(p)
        if found is None:
            registered = _registered_folder(str(name_or_path), manifest)
            if registered is not None:
                raise BundleError(
                    f"'{name_or_path}' is ambiguous: it names a registered model and also a folder here that "
                    f"holds no model.json. Give './{name_or_path}' for the folder (it needs a model.json), or "
                    f"'{registered}' for the registered model."
                )
            raise BundleError(f"'{p}' is not a model bundle (no model.json). Pick the folder holding model.json.")
        return found
    if p.is_file():
        if p.suffix.lower() != ".zip":
            raise BundleError(f"'{p}' is neither a bundle folder nor a .zip archive of one.")
        target = user_models_dir() / ".unpacked" / f"{p.stem}-{_sha256_file(p)[:16]}"
        if not _is_bundle(target):
            _extract_zip_atomically(p, target)
        return target
    return _resolve_name(str(name_or_path), manifest)


def resolve_model_arg(arg: Optional[str], manifest: ManifestArg = None) -> Path:
    """The bundle folder for a ``--model`` value as typed (None or "" = the default model).

    The raw text matters: ``liverct-real`` is a name (ambiguous if a folder of that name
    without model.json is here), ``./liverct-real`` is a folder. See ``resolve_model``.
    """
    return resolve_model(arg or None, manifest)


def _resolve_name(name: str, manifest: ManifestArg) -> Path:
    if _NAME_RE.match(name):
        for folder in (MODELS_RESOURCE_DIR / name, user_models_dir() / name):
            if _is_bundle(folder):
                return folder
        entry = _entry(name, manifest)
        if entry is not None and entry.get("url"):
            raise BundleError(
                f"Model '{name}' is not downloaded yet. Download it first "
                f"(models.download_model('{name}') or the command line's model download)."
            )
        if entry is not None:
            raise BundleError(f"Model '{name}' is listed but its files are missing. Reinstall the extension.")
    looks_like_path = any(c in name for c in "/\\") or name.lower().endswith(".zip")
    what = "No file or folder" if looks_like_path else "No model named"
    raise BundleError(f"{what} '{name}'. Available models: {_available_names(manifest)}.")


# ----------------------------------------------------------------- download
class _Retryable(Exception):
    """A transient transfer failure (timeout, dropped connection, 5xx)."""


def _report(progress: ProgressArg, fraction: float) -> None:
    if isinstance(progress, Progress):
        progress.check()
        progress.report(fraction, "download")
    elif progress is not None:
        progress(fraction, "download")


def _fetch_once(url: str, dest: Path, size: int, sha256: str, timeout: float, progress: ProgressArg) -> None:
    """One attempt: stream ``url`` into ``dest``; raise _Retryable or BundleError."""
    h = hashlib.sha256()
    got = 0
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "liverct-segmentation"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                got += len(chunk)
                if got > size:
                    raise BundleError(
                        f"The download from {url} is larger than the manifest's {size} bytes: "
                        "wrong or tampered file, discarded."
                    )
                h.update(chunk)
                out.write(chunk)
                _report(progress, got / size)
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise _Retryable(f"server error HTTP {exc.code}") from exc
        raise BundleError(f"Download of {url} failed: HTTP {exc.code} {exc.reason}. Check the model URL.") from exc
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
        raise _Retryable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from exc
    except OSError as exc:  # the local temp file, not the network
        raise BundleError(f"Cannot write the download to '{dest}' ({exc}). Check disk space and permissions.") from exc
    if got < size:
        raise _Retryable(f"connection closed after {got} of {size} bytes")
    if h.hexdigest().lower() != sha256.lower():
        raise BundleError(
            f"The file downloaded from {url} does not match the manifest's SHA256 (corrupted or tampered); "
            "it was deleted. Try again later or report it to the model's publisher."
        )


def download_model(
    name: str,
    progress: ProgressArg = None,
    timeout: float = 30,
    retries: int = 3,
    manifest: ManifestArg = None,
    force: bool = False,
    backoff: float = 1.0,
) -> Path:
    """Download, verify and install the manifest model ``name``; return its folder.

    ``progress`` is a ``Progress`` (cancellable) or a ``callback(fraction, stage)``.
    Transient failures are retried ``retries`` times in total with exponential
    backoff (``backoff`` seconds, doubled each time). Bundled and already
    installed models are returned without network access unless ``force``.
    """
    entry = _entry(name, manifest)
    if entry is None:
        raise BundleError(f"No model named '{name}' in the manifest. Available models: {_available_names(manifest)}.")
    if entry.get("bundled") and _is_bundle(MODELS_RESOURCE_DIR / name) and not force:
        return MODELS_RESOURCE_DIR / name
    final = user_models_dir() / name
    if _is_bundle(final) and not force:
        return final
    url = entry.get("url")
    if not url:
        raise BundleError(f"Model '{name}' has no download URL. Reinstall the extension to restore it.")
    if not str(url).lower().startswith(("https://", "http://")):
        raise BundleError(f"Model '{name}' has an unsupported URL scheme ({url}); only http(s) is allowed.")
    size, sha = int(entry["size_bytes"]), str(entry["sha256"])

    root = user_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".download-{name}-", suffix=".zip.part", dir=root)
    os.close(fd)
    part = Path(tmp_name)
    try:
        last = ""
        for attempt in range(1, max(1, int(retries)) + 1):
            try:
                _fetch_once(url, part, size, sha, timeout, progress)
                break
            except _Retryable as exc:
                last = str(exc)
                if attempt < retries:
                    time.sleep(backoff * 2 ** (attempt - 1))
        else:
            raise BundleError(
                f"Download of model '{name}' from {url} failed after {retries} attempts ({last}). "
                "Check the network connection or proxy settings and try again."
            )
        return _install(part, final, force)
    finally:
        part.unlink(missing_ok=True)


def _install(zip_path: Path, final: Path, force: bool) -> Path:
    """Move an existing install aside (when forcing), extract the new one, drop the old one."""
    old = None
    if force and final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, old)
    try:
        _extract_zip_atomically(zip_path, final, expected_name=final.name)
    except BaseException:
        if old is not None and not final.exists():
            os.replace(old, final)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return final


__all__ = [
    "ModelInfo",
    "load_manifest",
    "default_model_name",
    "default_bundle_dir",
    "user_models_dir",
    "list_models",
    "resolve_model",
    "resolve_model_arg",
    "download_model",
]
