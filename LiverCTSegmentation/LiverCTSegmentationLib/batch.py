"""Segment many CT files into one output folder: CSV report, resume, atomic outputs, locks.

Used by the ``liverseg`` command line and by the Slicer module's ``processFiles``.

Output layout (``OUTDIR/<case>/``)::

    <case>_label.nii.gz   uint8 labelmap on the input grid (``.nrrd`` with format="nrrd")
    <case>.seg.nrrd       Slicer segmentation (names, colours, terminology)
    <case>_stats.json     statistics, warnings, timings, model
    <case>_lesions.csv    one row per lesion
    <case>_overlay.png    preview picture
    .result.json          the record of the latest run of this case (ok | failed | skipped)
    .done.json            the completion manifest, written LAST
    .lock                 present only while a run owns the case

Why it is safe to kill at any moment:

- every file is written to ``<name>.tmp-<pid>`` in the same folder and then
  ``os.replace``-d, so a file is either the old complete one or the new complete one;
- redoing a case first deletes its ``.done.json``; ``.done.json`` is written last and
  records the input's full SHA256, the model (name, version, SHA256 of model.json,
  which itself pins the weights' SHA256) and the output-affecting options and the
  SHA256 of every output. A case is skipped on resume only if all of that still
  matches, so a kill leaves either a complete case or one that will be redone.

Input fingerprint: the FULL SHA256 of the input file(s) (for a DICOM folder, of every
file's name and content; for .mhd, of the header and its data file). Hashing runs at
~1 GB/s, negligible next to segmentation, and catches any change, not just mtime.

Concurrency: a case is claimed with an ``O_EXCL`` lock file holding pid + hostname.
A lock of a dead pid on this host is stale and taken over; the check-and-take-over
runs under a folder-level mutex so two runs cannot both take over the same lock.
A run that finds a case locked by a live process defers it and comes back to it at
the end (then it is usually complete and skipped). ``report.csv`` is rebuilt from the
per-case records under the folder mutex after every case, and written atomically.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io as _pyio
import json
import os
import socket
import threading
import time
import traceback
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from .engine.errors import Cancelled, InputError, LiverSegError, OutputError
from .engine.progress import Progress

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DONE_NAME = ".done.json"
RESULT_NAME = ".result.json"
LOCK_NAME = ".lock"
FOLDER_LOCK_NAME = ".liverseg-folder.lock"
MANIFEST_VERSION = 1
STAGES = ("read", "check", "preprocess", "coarse", "fine", "postprocess", "resample", "statistics", "write",
          "overlay")
REPORT_COLUMNS = (
    ["case", "input", "status", "error"]
    + [f"seconds_{s}" for s in STAGES]
    + ["seconds_total", "liver_ml", "tumor_count", "tumor_ml", "burden_percent",
       "model_name", "model_version", "label_path", "seg_path", "stats_path", "lesions_path",
       "overlay_path", "warnings", "finished_at"]
)
OUTPUT_KEYS = ("label", "seg", "stats", "lesions", "overlay")

BatchProgress = Callable[[float, str], None]


# ----------------------------------------------------------------------------- types
@dataclass
class BatchOptions:
    """Options of a batch run. Only the *output-affecting* ones are part of the resume
    key (fast, roi, format, seg_nrrd, overlay); device/threads/batch_size do not change
    what is written, so changing them does not force a redo."""

    device: str = "auto"
    fast: bool = False
    threads: Optional[int] = None
    label_format: str = "nifti"  # nifti | nrrd
    write_seg_nrrd: bool = True
    overlay: bool = True
    roi_lps: Optional[tuple] = None
    batch_size: int = 2
    report_name: Union[str, os.PathLike] = "report.csv"

    def resume_key(self) -> dict:
        return {
            "fast": bool(self.fast),
            "roi_lps": [list(map(float, x)) for x in self.roi_lps] if self.roi_lps else None,
            "label_format": self.label_format,
            "write_seg_nrrd": bool(self.write_seg_nrrd),
            "overlay": bool(self.overlay),
        }

    def segment_options(self):
        from .engine import pipeline

        return pipeline.SegmentOptions(
            device=self.device, fast=self.fast, roi_lps=self.roi_lps,
            threads=self.threads, batch_size=self.batch_size,
        )


@dataclass
class Case:
    name: str
    path: Path
    kind: str = "file"  # file | dicom


@dataclass
class CaseResult:
    case: str
    input: str
    status: str  # ok | failed | skipped
    error: str = ""
    error_kind: str = ""  # LiverSegError.code, "internal" for bugs, "" when ok
    traceback: str = ""
    timings: dict = field(default_factory=dict)
    seconds_total: float = 0.0
    statistics: dict = field(default_factory=dict)
    model_name: str = ""
    model_version: str = ""
    outputs: dict = field(default_factory=dict)  # key -> path relative to OUTDIR
    warnings: list = field(default_factory=list)
    finished_at: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CaseResult":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def report_row(self) -> dict:
        row = {"case": self.case, "input": self.input, "status": self.status, "error": self.error}
        for s in STAGES:
            v = self.timings.get(s)
            row[f"seconds_{s}"] = "" if v is None else f"{float(v):.3f}"
        row["seconds_total"] = f"{self.seconds_total:.3f}"
        for k in ("liver_ml", "tumor_count", "tumor_ml", "burden_percent"):
            v = self.statistics.get(k, "")
            row[k] = f"{v:.3f}" if isinstance(v, float) else v
        row["model_name"], row["model_version"] = self.model_name, self.model_version
        for key in OUTPUT_KEYS:
            row[f"{key}_path"] = self.outputs.get(key, "")
        row["warnings"] = " | ".join(self.warnings)
        row["finished_at"] = self.finished_at
        return row


# ------------------------------------------------------------------------ discovery
def case_stem(path: Path) -> str:
    """File name without its volume extension (handles the .nii.gz double extension)."""
    name = path.name
    low = name.lower()
    for suf in VOLUME_SUFFIXES:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return path.stem or name


def _is_volume_file(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith(".")


def _looks_dicom(p: Path) -> bool:
    if not p.is_file() or p.name.startswith("."):
        return False
    if p.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(p, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _safe_name(name: str) -> str:
    """Keep non-ASCII letters and spaces; drop path separators and control characters."""
    name = unicodedata.normalize("NFC", name)
    out = "".join("_" if (c in "/\\:*?\"<>|" or ord(c) < 32) else c for c in name).strip()
    out = out.lstrip(".")
    return out or "case"


def discover_cases(inputs: Iterable[Union[str, os.PathLike]], exclude: Optional[Path] = None) -> list[Case]:
    """Expand files and folders into cases, sorted by name with stable unique names.

    - a volume file is a case (any explicitly named file is a case, whatever its
      extension: reading it will say what is wrong);
    - a folder is walked recursively (hidden folders and ``exclude``, the output
      folder, are skipped): volume files inside are cases; a folder holding DICOM
      files and no volume files is one DICOM-series case;
    - a path that does not exist becomes a case that fails with a clear message.

    Names come from the file name (folder name for DICOM). Names that collide
    (e.g. ``a/ct.nii.gz`` and ``b/ct.nrrd``) all get ``_<8 hex of the absolute path's
    SHA1>`` appended, which depends only on the path, so it is stable between runs.
    """
    found: list[Case] = []
    seen: set[Path] = set()
    excl = exclude.resolve() if exclude is not None else None

    def add(path: Path, kind: str) -> None:
        rp = path.resolve()
        if rp in seen:
            return
        seen.add(rp)
        name = path.resolve().name if kind == "dicom" else case_stem(path)
        found.append(Case(_safe_name(name), path, kind))

    for raw in inputs:
        p = Path(raw).expanduser()
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                d = Path(dirpath)
                dirnames[:] = sorted(
                    n for n in dirnames
                    if not n.startswith(".") and (excl is None or (d / n).resolve() != excl)
                )
                files = [d / n for n in sorted(filenames)]
                vols = [f for f in files if _is_volume_file(f)]
                if vols:
                    for f in vols:
                        add(f, "file")
                elif any(_looks_dicom(f) for f in files):
                    add(d, "dicom")
        else:
            add(p, "file")

    counts: dict[str, int] = {}
    for c in found:
        counts[c.name.casefold()] = counts.get(c.name.casefold(), 0) + 1
    for c in found:
        if counts[c.name.casefold()] > 1:
            h = hashlib.sha1(str(c.path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:8]
            c.name = f"{c.name}_{h}"
    found.sort(key=lambda c: (c.name.casefold(), c.name))
    return found


# ------------------------------------------------------------------------- hashing
def sha256_file(path: Union[str, os.PathLike], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


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
    """Full SHA256 of everything the case is read from (see module docstring)."""
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


# ----------------------------------------------------------------- atomic writing
def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident() % 100000}")


def _as_output_error(err: OSError, path: Path) -> OutputError:
    if err.errno == errno.ENOSPC:
        msg = f"the disk is full while writing {path}. Free some space and rerun; completed cases are kept."
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg = f"cannot write {path}: permission denied. Choose a writable output folder with -o."
    else:
        msg = f"cannot write {path}: {err.strerror or err}. Check the output folder."
    out = OutputError(msg)
    out.errno = err.errno  # type: ignore[attr-defined]
    return out


@contextlib.contextmanager
def atomic_path(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """Yield a temp path in the same folder; on success ``os.replace`` it onto ``path``.
    On any failure (including KeyboardInterrupt) the temp file is removed."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        _unlink(tmp)
        raise _as_output_error(err, path) from err
    except BaseException:
        _unlink(tmp)
        raise


def write_bytes_atomic(path: Union[str, os.PathLike], data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json_atomic(path: Union[str, os.PathLike], obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n").encode("utf-8"))


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _remove_temp_files(folder: Path) -> None:
    """Remove leftovers of interrupted atomic writes. Only call while owning ``folder``."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for p in entries:
        if ".tmp-" in p.name and p.is_file():
            _unlink(p)


# -------------------------------------------------------------------------- locks
def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        import psutil

        if not psutil.pid_exists(pid):
            return False
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    except ImportError:  # pragma: no cover
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@contextlib.contextmanager
def folder_mutex(outdir: Path, timeout: float = 120.0) -> Iterator[None]:
    """Short critical section shared by all runs on ``outdir`` (lock take-over, report).

    POSIX: ``fcntl.flock`` (released by the kernel if the process dies). Windows:
    ``msvcrt.locking``. Either way a crashed holder cannot block others."""
    path = outdir / FOLDER_LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _as_output_error(err, path) from err
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            deadline = time.monotonic() + timeout
            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise OutputError(f"timed out waiting for {path}; is another liverseg run stuck?")
                    time.sleep(0.05)
            try:
                yield
            finally:
                os.lseek(fd, 0, 0)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)


def _read_lock(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


class CaseLocked(Exception):
    def __init__(self, holder: dict):
        super().__init__(f"locked by pid {holder.get('pid')} on {holder.get('host')}")
        self.holder = holder


def claim_case(outdir: Path, case_dir: Path) -> Path:
    """Create ``case_dir/.lock`` with O_EXCL. Takes over a stale lock (dead pid on this
    host, or an unreadable lock older than a minute). Raises CaseLocked otherwise."""
    lock = case_dir / LOCK_NAME
    host = socket.gethostname()
    payload = json.dumps({"pid": os.getpid(), "host": host, "started": time.time()}).encode()
    with folder_mutex(outdir):
        try:
            case_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _as_output_error(err, case_dir) from err
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_lock(lock)
                if holder is None:
                    continue  # vanished meanwhile: retry
                stale = False
                if holder.get("host") == host and isinstance(holder.get("pid"), int):
                    stale = not _pid_alive(holder["pid"]) or holder["pid"] == os.getpid()
                elif not holder:
                    # Empty/garbled: a kill between create and write. Give a writer a moment.
                    try:
                        stale = time.time() - lock.stat().st_mtime > 60
                    except FileNotFoundError:
                        continue
                if not stale:
                    raise CaseLocked(holder)
                _unlink(lock)
                continue
            except OSError as err:
                raise _as_output_error(err, lock) from err
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
            return lock
        raise CaseLocked(_read_lock(lock) or {})


def release_case(lock: Path) -> None:
    holder = _read_lock(lock)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        _unlink(lock)


# ------------------------------------------------------------------------- resume
def output_paths(outdir: Path, case: str, options: BatchOptions) -> dict[str, Path]:
    d = outdir / case
    ext = ".nrrd" if options.label_format == "nrrd" else ".nii.gz"
    paths = {
        "label": d / f"{case}_label{ext}",
        "stats": d / f"{case}_stats.json",
        "lesions": d / f"{case}_lesions.csv",
    }
    if options.write_seg_nrrd:
        paths["seg"] = d / f"{case}.seg.nrrd"
    if options.overlay:
        paths["overlay"] = d / f"{case}_overlay.png"
    return paths


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


# ------------------------------------------------------------------------- report
def collect_results(outdir: Path) -> list[CaseResult]:
    """All per-case records under ``outdir`` (the report describes the folder)."""
    results = []
    try:
        dirs = sorted(p for p in outdir.iterdir() if p.is_dir())
    except OSError:
        return results
    for d in dirs:
        rec = d / RESULT_NAME
        try:
            r = CaseResult.from_dict(json.loads(rec.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        if r.status == "ok" and not (d / DONE_NAME).is_file():
            r.status, r.error = "failed", "interrupted before completion; rerun to redo this case"
        results.append(r)
    results.sort(key=lambda r: (r.case.casefold(), r.case))
    return results


def report_path(outdir: Path, options: BatchOptions) -> Path:
    p = Path(options.report_name)
    return p if (p.is_absolute() or p.parent != Path(".")) else outdir / p


def write_report(outdir: Path, options: BatchOptions) -> Path:
    """Rebuild the CSV from the per-case records, atomically, under the folder mutex."""
    path = report_path(outdir, options)
    with folder_mutex(outdir):
        if path.parent == outdir:
            for p in outdir.glob(f"{path.name}.tmp-*"):
                _unlink(p)  # left by a killed run; safe: writers hold the mutex
        buf = _pyio.StringIO()
        w = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in collect_results(outdir):
            w.writerow(r.report_row())
        write_bytes_atomic(path, buf.getvalue().encode("utf-8"))
    return path


# ------------------------------------------------------------------------ running
def _stats_dict(stats: Any) -> dict:
    if stats is None:
        return {}
    d = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in d.items() if not isinstance(v, (list, dict))}


def _lesion_rows(stats: Any) -> list[dict]:
    if stats is None:
        return []
    if hasattr(stats, "lesion_rows"):
        return list(stats.lesion_rows())
    rows = []
    for les in getattr(stats, "lesions", []) or []:
        d = asdict(les) if hasattr(les, "__dataclass_fields__") else dict(les)
        c = d.pop("centroid_lps", None)
        if c is not None:
            d["centroid_x_lps"], d["centroid_y_lps"], d["centroid_z_lps"] = (float(v) for v in c)
        rows.append(d)
    return rows


def _write_csv_atomic(path: Path, rows: list[dict], default_columns: Sequence[str]) -> None:
    cols = list(rows[0].keys()) if rows else list(default_columns)
    buf = _pyio.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()})
    write_bytes_atomic(path, buf.getvalue().encode("utf-8"))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _rel(outdir: Path, p: Path) -> str:
    try:
        return p.relative_to(outdir).as_posix()
    except ValueError:
        return str(p)


def _ensure_outdir(outdir: Path) -> None:
    """Create OUTDIR and prove it is writable before any work (clear OutputError)."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _as_output_error(err, outdir) from err
    if not outdir.is_dir():
        raise OutputError(f"output path {outdir} exists and is not a folder. Choose another -o.")
    probe = outdir / f".liverseg-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as err:
        raise _as_output_error(err, outdir) from err
    finally:
        _unlink(probe)


class _CaseProgress:
    """Adapts the engine's per-case Progress into batch-wide fraction + stage text."""

    def __init__(self, callback: Optional[BatchProgress], index: int, total: int, case: str):
        self.callback, self.index, self.total, self.case = callback, index, total, case

    def __call__(self, fraction: float, stage: str) -> None:
        if self.callback is not None:
            overall = (self.index + min(max(fraction, 0.0), 1.0)) / max(self.total, 1)
            self.callback(overall, f"{self.index + 1}/{self.total} {self.case}: {stage}")


def _load_bundle(bundle: Any) -> Any:
    if isinstance(bundle, (str, os.PathLike)):
        from .engine.bundle import ModelBundle

        return ModelBundle.load(Path(bundle))
    return bundle


def run_batch(
    inputs: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]],
    outdir: Union[str, os.PathLike],
    options: Optional[BatchOptions] = None,
    bundle: Any = None,
    progress: Union[None, BatchProgress, Progress] = None,
    resume: bool = True,
    overwrite: bool = False,
    cancel_event: Optional[threading.Event] = None,
    on_case_done: Optional[Callable[[CaseResult], None]] = None,
) -> list[CaseResult]:
    """Segment every case found in ``inputs`` into ``outdir``; one failure never stops
    the batch. Returns one CaseResult per case (status ok | failed | skipped).

    ``bundle``: a loaded ModelBundle or a bundle folder. ``progress``: a callback
    ``(fraction of the whole batch, "i/n case: stage")`` or an engine ``Progress``
    (its callback and cancel event are used). Cancellation (``cancel_event`` or
    Ctrl-C) raises ``Cancelled``/``KeyboardInterrupt`` after cleaning up the current
    case (no partial files; completed cases are kept).

    Raises OutputError (before any case runs) if ``outdir`` is not writable, and
    InputError if nothing to segment was found.
    """
    options = options or BatchOptions()
    if options.label_format not in ("nifti", "nrrd"):
        raise ValueError(f"label_format must be 'nifti' or 'nrrd', not {options.label_format!r}")
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    outdir = Path(outdir).expanduser().absolute()
    callback: Optional[BatchProgress] = progress  # type: ignore[assignment]
    if isinstance(progress, Progress):
        callback = progress.callback
        cancel_event = cancel_event or progress.cancel_event

    cases = discover_cases(inputs, exclude=outdir)
    if not cases:
        raise InputError(
            "no CT volumes found in " + ", ".join(str(i) for i in inputs)
            + f". Give .nii/.nii.gz/.nrrd/.mha/.mhd files, folders of them, or DICOM series folders."
        )
    _ensure_outdir(outdir)
    if bundle is None:
        from . import models

        bundle = models.default_bundle_dir()
    bundle = _load_bundle(bundle)
    model = model_identity(bundle)

    results: dict[str, CaseResult] = {}
    deferred: list[tuple[int, Case]] = []
    fatal: Optional[OutputError] = None

    def finish(r: CaseResult) -> None:
        results[r.case] = r
        try:
            write_report(outdir, options)
        except OutputError as err:
            r.warnings.append(f"report not updated: {err}")
        if on_case_done is not None:
            on_case_done(r)

    queue = list(enumerate(cases))
    for attempt in range(2):
        for index, case in queue:
            if fatal is not None:
                finish(CaseResult(case.name, str(case.path), "failed", f"not run: {fatal}", "output",
                                  model_name=model["name"], model_version=model["version"], finished_at=_now()))
                continue
            if cancel_event is not None and cancel_event.is_set():
                raise Cancelled("Batch cancelled by the user; completed cases are kept.")
            cp = _CaseProgress(callback, index, len(cases), case.name)
            try:
                r = _run_case(case, outdir, options, bundle, model, cp, cancel_event, resume, overwrite,
                              wait_for_lock=attempt == 1)
            except CaseLocked as locked:
                if attempt == 0:
                    deferred.append((index, case))
                    continue
                r = CaseResult(case.name, str(case.path), "skipped",
                               f"being processed by another run ({locked}); not touched",
                               model_name=model["name"], model_version=model["version"], finished_at=_now())
                results[r.case] = r
                if on_case_done is not None:
                    on_case_done(r)
                continue
            if r.status == "failed" and r.error_kind == "output" and getattr(r, "_enospc", False):
                fatal = OutputError(r.error)
            finish(r)
        queue, deferred = deferred, []
        if not queue:
            break
    if callback is not None:
        callback(1.0, "done")
    return [results[c.name] for c in cases if c.name in results]


def _run_case(case: Case, outdir: Path, options: BatchOptions, bundle: Any, model: dict,
              progress: _CaseProgress, cancel_event: Optional[threading.Event],
              resume: bool, overwrite: bool, wait_for_lock: bool) -> CaseResult:
    case_dir = outdir / case.name
    t0 = time.perf_counter()
    base = dict(model_name=model["name"], model_version=model["version"])
    while True:
        try:
            lock = claim_case(outdir, case_dir)
            break
        except CaseLocked as locked:
            holder = locked.holder
            same_host = holder.get("host") == socket.gethostname()
            if not wait_for_lock or not same_host:
                raise
            if cancel_event is not None and cancel_event.is_set():
                raise Cancelled("Batch cancelled by the user; completed cases are kept.")
            progress(0.0, f"waiting for another run ({locked})")
            time.sleep(0.2)
        except OutputError as err:
            r = CaseResult(case.name, str(case.path), "failed", str(err), "output", **base, finished_at=_now())
            r._enospc = getattr(err, "errno", None) == errno.ENOSPC  # type: ignore[attr-defined]
            return r

    completed = False
    try:
        _remove_temp_files(case_dir)
        # Fingerprint the input (needed both to skip and to record).
        try:
            fp = input_fingerprint(case)
        except OSError:
            fp = None
        if fp is not None and resume and not overwrite:
            done, _why, manifest = check_done(case_dir, fp, model, options)
            if done:
                prev = manifest.get("result", {})
                r = CaseResult(case.name, str(case.path), "skipped", "", "", timings={},
                               statistics=prev.get("statistics", {}), outputs=prev.get("outputs", {}),
                               warnings=prev.get("warnings", []), **base)
                r.seconds_total = time.perf_counter() - t0
                r.finished_at = _now()
                write_json_atomic(case_dir / RESULT_NAME, r.to_dict())
                completed = True
                return r
        paths = output_paths(outdir, case.name, options)
        if not overwrite and not resume and (case_dir / DONE_NAME).exists():
            raise OutputError(
                f"results already exist in {case_dir}. Use --overwrite to replace them or --resume to keep them."
            )
        _unlink(case_dir / DONE_NAME)  # invalidate first: from now on the case is "to redo"
        r = _segment_case(case, case_dir, paths, outdir, options, bundle, progress, cancel_event, fp, base)
        r.seconds_total = time.perf_counter() - t0
        r.finished_at = _now()
        write_json_atomic(case_dir / RESULT_NAME, r.to_dict())
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "case": case.name,
            "input": {"path": str(case.path), "kind": case.kind, **(fp or {})},
            "model": model,
            "options": options.resume_key(),
            "outputs": {k: {"file": Path(v).name, "sha256": sha256_file(v)} for k, v in paths.items()},
            "result": {"statistics": r.statistics, "outputs": r.outputs, "warnings": r.warnings},
            "finished_at": r.finished_at,
        }
        write_json_atomic(case_dir / DONE_NAME, manifest)  # LAST
        completed = True
        return r
    except (Cancelled, KeyboardInterrupt):
        raise
    except Exception as err:  # per-case isolation: record and go on
        r = CaseResult(case.name, str(case.path), "failed", **base)
        if isinstance(err, LiverSegError):
            r.error, r.error_kind = str(err), getattr(err, "code", "error")
            r._enospc = getattr(err, "errno", None) == errno.ENOSPC or isinstance(  # type: ignore[attr-defined]
                err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
        elif isinstance(err, MemoryError):
            r.error, r.error_kind = "out of memory: close other programs, use --fast or a smaller ROI", "resource"
        elif isinstance(err, OSError) and err.errno == errno.ENOSPC:
            r.error, r.error_kind = str(_as_output_error(err, case_dir)), "output"
            r._enospc = True  # type: ignore[attr-defined]
        else:
            r.error = f"unexpected error ({type(err).__name__}: {err})"
            r.error_kind = "internal"
        r.traceback = traceback.format_exc()
        r.seconds_total = time.perf_counter() - t0
        r.finished_at = _now()
        # Outputs of a failed redo must not look valid: .done.json is already gone.
        try:
            write_json_atomic(case_dir / RESULT_NAME, r.to_dict())
            completed = True
        except OutputError:
            pass
        return r
    finally:
        if not completed:
            _remove_temp_files(case_dir)
        release_case(lock)


def _segment_case(case: Case, case_dir: Path, paths: dict[str, Path], outdir: Path, options: BatchOptions,
                  bundle: Any, progress: _CaseProgress, cancel_event: Optional[threading.Event],
                  fp: Optional[dict], base: dict) -> CaseResult:
    from .engine import checks, io, pipeline

    timings: dict[str, float] = {}
    prog = Progress(progress, cancel_event)

    t = time.perf_counter()
    prog.stage("read", 0.0, 0.05)
    if not case.path.exists():
        raise InputError(f"{case.path} does not exist. Check the path.")
    vol = io.read_volume(case.path)
    timings["read"] = time.perf_counter() - t

    t = time.perf_counter()
    prog.stage("check", 0.05, 0.08)
    warnings = list(checks.check_volume(vol) or [])
    warnings += list(vol.metadata.get("warnings", []) or [])
    timings["check"] = time.perf_counter() - t

    seg_progress = Progress(lambda f, s: progress(0.08 + 0.77 * f, s), cancel_event)
    res = pipeline.segment(vol, bundle, options.segment_options(), progress=seg_progress)
    for k, v in (res.timings or {}).items():
        if k != "total":
            timings[k] = float(v)
    warnings += [w for w in (res.warnings or []) if w not in warnings]
    prog.check()

    t = time.perf_counter()
    prog.stage("write", 0.85, 0.92)
    labels = list(getattr(bundle, "labels", []) or [])
    io.write_volume(res.labelmap, paths["label"], overwrite=True)
    if "seg" in paths:
        from .engine import segfile

        segfile.write_seg_nrrd(res.labelmap, labels, paths["seg"], overwrite=True)
    stats = _stats_dict(res.statistics)
    lesions = _lesion_rows(res.statistics)
    _write_csv_atomic(paths["lesions"], lesions,
                      ["index", "volume_ml", "longest_axial_diameter_mm", "centroid_x_lps", "centroid_y_lps",
                       "centroid_z_lps"])
    timings["write"] = time.perf_counter() - t
    prog.check()

    if "overlay" in paths:
        t = time.perf_counter()
        prog.stage("overlay", 0.92, 1.0)
        from .overlay import save_overlay_png

        save_overlay_png(vol, res.labelmap, paths["overlay"], title=case.name, statistics=stats,
                         labels=labels, model=f"{base['model_name']} {base['model_version']}".strip())
        timings["overlay"] = time.perf_counter() - t

    r = CaseResult(case.name, str(case.path), "ok", timings=timings, statistics=stats,
                   outputs={k: _rel(outdir, v) for k, v in paths.items()}, warnings=warnings, **base)
    stats_doc = {
        "case": case.name,
        "input": str(case.path),
        "input_sha256": (fp or {}).get("sha256"),
        "model": {"name": base["model_name"], "version": base["model_version"],
                  "demo": bool(getattr(bundle, "demo", False))},
        "options": options.resume_key(),
        "statistics": stats,
        "lesions": lesions,
        "warnings": warnings,
        "timings_s": timings,
        "geometry": {"size_ijk": list(vol.size_ijk), "spacing": list(vol.spacing), "origin": list(vol.origin),
                     "direction": vol.direction.tolist()},
    }
    write_json_atomic(paths["stats"], stats_doc)  # stats last among outputs; timings of "overlay" included
    return r
