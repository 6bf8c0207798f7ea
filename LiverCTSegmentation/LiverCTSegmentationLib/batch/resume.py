"""Resume: the ``<case>/.done.json`` completion manifest, and the hashes it is keyed on.

``.done.json`` is written LAST and records the input's full SHA256, the model (name,
version, SHA256 of model.json, which itself pins the weights' SHA256), the
output-affecting options and the SHA256 of every output. A case is skipped on resume
only if all of that still matches.

Input fingerprint: the FULL SHA256 of every file the case reads (``engine.input_files``):
for a DICOM folder every file's relative name and content, subfolders the reader searches
included; for .mhd/.nhdr the header and every detached data file it names. Hashing runs at
~1 GB/s, negligible next to segmentation, and catches any change, not just mtime.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from .cases import Case
from ..engine.bundle import sha256_file
from ..engine.input_files import files_read
from .options import BatchOptions
from .results import DONE_NAME, CaseResult

MANIFEST_VERSION = 1


def input_fingerprint(case: Case) -> dict:
    """Full SHA256 of every file the case reads (see this module's docstring); `InputError`
    for a path that is not a regular file (a FIFO or device would never finish hashing).
    A DICOMweb case: its sorted SOP instance UIDs, asked from the PACS (``dicomweb.fingerprint``)."""
    if case.kind == "dicomweb":
        from .dicomweb import fingerprint, parse_url

        return fingerprint(parse_url(case.url))
    h = hashlib.sha256()
    files = files_read(case.path, case.kind)
    base = case.path if case.kind == "dicom" else case.path.parent
    size = 0
    for f in files:
        try:
            rel = f.relative_to(base).as_posix()
        except ValueError:
            rel = str(f)
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
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


def check_done(case_dir: Path, fingerprint: dict, model: dict, options: BatchOptions,
               kind: str = "file") -> tuple[bool, str, Optional[dict]]:
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
    if manifest.get("options") != options.resume_key(kind):
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
        "input": {"path": case.input, "kind": case.kind, **(fingerprint or {})},
        "model": model,
        "options": options.resume_key(case.kind),
        "outputs": {k: {"file": Path(v).name, "sha256": sha256_file(v)} for k, v in paths.items()},
        "result": {"statistics": result.statistics, "outputs": result.outputs, "warnings": result.warnings},
        "finished_at": result.finished_at,
    }
