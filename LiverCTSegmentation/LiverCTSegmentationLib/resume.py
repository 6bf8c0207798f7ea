"""Resume: the ``<case>/.done.json`` completion manifest, and the hashes it is keyed on.

``.done.json`` is written LAST and records the input's full SHA256, the model (name,
version, SHA256 of model.json, which itself pins the weights' SHA256), the
output-affecting options and the SHA256 of every output. A case is skipped on resume
only if all of that still matches.

Input fingerprint: the FULL SHA256 of the input file(s) (for a DICOM folder, of every
file's name and content; for .mhd, of the header and its data file). Hashing runs at
~1 GB/s, negligible next to segmentation, and catches any change, not just mtime.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from .cases import Case
from .engine.bundle import sha256_file
from .options import BatchOptions
from .results import CaseResult

DONE_NAME = ".done.json"
MANIFEST_VERSION = 1


def _mhd_data_files(path: Path) -> list[Path]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        if line.strip().lower().startswith("elementdatafile"):
            value = line.split("=", 1)[-1].strip()
            if value.upper() not in ("LOCAL", "LIST") and "%" not in value:
                return [path.parent / value]
    return []


def input_fingerprint(case: Case) -> dict:
    """Full SHA256 of everything the case is read from (see this module's docstring)."""
    h = hashlib.sha256()
    files: list[Path]
    if case.kind == "dicom":
        files = sorted(f for f in case.path.iterdir() if f.is_file() and not f.name.startswith("."))
    else:
        files = [case.path]
        if case.path.name.lower().endswith((".mhd", ".nhdr")):
            files += _mhd_data_files(case.path)
    size = 0
    for f in files:
        h.update(f.name.encode("utf-8", "surrogateescape") + b"\0")
        h.update(sha256_file(f).encode())
        size += f.stat().st_size
    return {"sha256": h.hexdigest(), "files": len(files), "size": size, "method": "sha256-full"}


def model_identity(bundle: Any) -> dict:
    """Name, version and the SHA256 of model.json (which pins every weight file's SHA256)."""
    path = Path(getattr(bundle, "path", "") or "")
    sha = ""
    mj = path / "model.json"
    if mj.is_file():
        sha = sha256_file(mj)
    return {"name": str(getattr(bundle, "name", "")), "version": str(getattr(bundle, "version", "")), "sha256": sha}


def check_done(case_dir: Path, fingerprint: dict, model: dict, options: BatchOptions) -> tuple[bool, str, Optional[dict]]:
    """Is the case complete for exactly this input, model and options? (ok, why-not, manifest)"""
    mf = case_dir / DONE_NAME
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False, "not done yet", None
    except (OSError, ValueError):
        return False, "unreadable .done.json", None
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return False, "old manifest format", None
    if manifest.get("input", {}).get("sha256") != fingerprint.get("sha256"):
        return False, "input changed", None
    if manifest.get("model") != model:
        return False, "model changed", None
    if manifest.get("options") != options.resume_key():
        return False, "options changed", None
    for key, info in manifest.get("outputs", {}).items():
        p = case_dir / info["file"]
        if not p.is_file():
            return False, f"output {info['file']} missing", None
        if sha256_file(p) != info["sha256"]:
            return False, f"output {info['file']} modified", None
    return True, "", manifest



def done_manifest(case: Case, fingerprint: Optional[dict], model: dict, options: BatchOptions,
                  paths: dict[str, Path], result: CaseResult) -> dict:
    """The ``.done.json`` content for a case whose outputs ``paths`` are all written."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "case": case.name,
        "input": {"path": str(case.path), "kind": case.kind, **(fingerprint or {})},
        "model": model,
        "options": options.resume_key(),
        "outputs": {k: {"file": Path(v).name, "sha256": sha256_file(v)} for k, v in paths.items()},
        "result": {"statistics": result.statistics, "outputs": result.outputs, "warnings": result.warnings},
        "finished_at": result.finished_at,
    }
