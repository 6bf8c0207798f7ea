"""Segment many CT files into one output folder: CSV report, resume, atomic outputs, locks.

Used by the ``liverseg`` command line and by the Slicer module's ``processFiles``.
This module holds the orchestration (``run_batch``); the parts live beside it in the
``batch`` package: ``cases`` (discovery, case names), ``options`` (BatchOptions, output
names), ``results`` (CaseResult), ``locking`` (per-case locks, folder mutex), ``resume``
(.done.json, hashes), ``report`` (report.csv), ``atomic_files`` (atomic writes),
``path_safety`` (outputs never on inputs) and ``segment_case`` (one case's work). The
names in ``__all__`` are the package's public names (``from LiverCTSegmentationLib import batch``).

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

Input fingerprint and manifest: see ``resume``. Concurrency: each case is claimed
with a lock file (see ``locking``). A run that finds a case locked by a live process
defers it and comes back to it at the end, waiting at most ``BatchOptions.lock_wait`` seconds
for a live holder on this host; a case still locked then (or locked from another host) is
reported "locked", never "done". See docs/guarantees.md.
``report.csv`` is rebuilt from the per-case records after every case (see ``report``).
"""
from __future__ import annotations

import errno
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

# Every name in __all__ is re-exported by the package (batch/__init__.py).
from .atomic_files import (
    as_output_error, atomic_path, remove_temp_files, unlink_quietly, write_bytes_atomic, write_json_atomic,
)
from .cases import VOLUME_SUFFIXES, Case, case_stem, discover_cases
from ..engine.errors import BundleError, Cancelled, InputError, LiverSegError, OutputError
from ..engine.progress import Progress
from .locking import FOLDER_LOCK_NAME, LOCK_NAME, CaseLocked, claim_case, describe_holder, folder_mutex, release_case
from .options import BatchOptions, output_paths
from .report import REPORT_COLUMNS, collect_results, report_path, write_report
from .results import DONE_NAME, OUTPUT_KEYS, RESULT_NAME, STAGES, CaseResult
from .resume import (
    MANIFEST_VERSION, check_done, done_manifest, input_fingerprint, model_identity, sha256_file,
)
from .path_safety import plan_outputs
from .segment_case import segment_case

__all__ = [
    "BatchOptions", "BatchProgress", "Case", "CaseLocked", "CaseResult", "DONE_NAME", "FOLDER_LOCK_NAME",
    "LOCK_NAME", "MANIFEST_VERSION", "OUTPUT_KEYS", "REPORT_COLUMNS", "RESULT_NAME", "STAGES", "VOLUME_SUFFIXES",
    "atomic_path", "case_stem", "check_done", "claim_case", "collect_results", "discover_cases", "folder_mutex",
    "input_fingerprint", "model_identity", "output_paths", "release_case", "report_path", "run_batch",
    "sha256_file", "write_bytes_atomic", "write_json_atomic", "write_report",
]

BatchProgress = Callable[[float, str], None]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _ensure_outdir(outdir: Path) -> None:
    """Create OUTDIR and prove it is writable before any work (clear OutputError)."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise as_output_error(err, outdir) from err
    if not outdir.is_dir():
        raise OutputError(f"output path {outdir} exists and is not a folder. Choose another -o.")
    probe = outdir / f".liverseg-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"ok")
    except OSError as err:
        raise as_output_error(err, outdir) from err
    finally:
        unlink_quietly(probe)


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
        from ..engine.bundle import ModelBundle

        return ModelBundle.load(Path(bundle))
    return bundle



@dataclass
class PreparedBatch:
    """What every runner (here and ``ray_run``) does before the first case, done once."""

    options: BatchOptions
    outdir: Path
    cases: list
    bundle: Any
    model: dict
    callback: Optional[BatchProgress]
    cancel_event: Optional[threading.Event]


def prepare_batch(inputs, outdir, options: Optional[BatchOptions], bundle: Any, progress,
                  cancel_event: Optional[threading.Event]) -> PreparedBatch:
    """Check the options, find the cases, check that no output lands on an input, create OUTDIR
    and load the model; raises InputError/OutputError/BundleError before any case runs."""
    options = options or BatchOptions()
    if options.label_format not in ("nifti", "nrrd"):
        raise ValueError(f"label_format must be 'nifti' or 'nrrd', not {options.label_format!r}")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    outdir = Path(outdir).expanduser().absolute()
    callback: Optional[BatchProgress] = progress  # type: ignore[assignment]
    if isinstance(progress, Progress):
        callback = progress.callback
        cancel_event = cancel_event or progress.cancel_event
    cases = discover_cases(inputs, exclude=outdir)
    if not cases:
        raise InputError(
            "no CT volumes found in " + ", ".join(str(i) for i in inputs)
            + ". Give .nii/.nii.gz/.nrrd/.mha/.mhd files, folders of them, or DICOM series folders."
        )
    plan_outputs(cases, outdir, options)  # before anything is written: outputs never land on inputs
    _ensure_outdir(outdir)
    if bundle is None:
        from .. import models

        bundle = models.default_bundle_dir()
    bundle = _load_bundle(bundle)
    return PreparedBatch(options, outdir, cases, bundle, model_identity(bundle), callback, cancel_event)


def locked_result(case: Case, holder: dict, this_host: str, outdir: Path, options: BatchOptions,
                  base: dict) -> CaseResult:
    """The true row of a case another run still holds: not run, whose lock, and what to do."""
    why = ("a run on another host; this run cannot tell whether it is still alive"
           if holder.get("host") != this_host else f"still held after waiting {options.lock_wait:g} s")
    return CaseResult(case.name, case.input, "locked",
                      f"not run: {describe_holder(holder)} ({why}). Rerun when that run has finished, or delete "
                      f"{outdir / case.name / LOCK_NAME} if it is gone.", "locked", **base, finished_at=_now())


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
    the batch. Returns exactly one CaseResult per case with its true status (see
    ``results.STATUSES``): ok, skipped (done by an earlier run, verified), done-by-other-run
    (a concurrent run finished it while this one waited), locked (another run holds it:
    not run), not-run (stopped after a full disk), failed.

    ``bundle``: a loaded ModelBundle or a bundle folder. ``progress``: a callback
    ``(fraction of the whole batch, "i/n case: stage")`` or an engine ``Progress``
    (its callback and cancel event are used). Cancellation (``cancel_event`` or
    Ctrl-C) raises ``Cancelled``/``KeyboardInterrupt`` after cleaning up the current
    case (its partial outputs are removed; completed cases are kept).

    Raises, before any case runs: InputError if nothing to segment was found,
    OutputError if ``outdir`` is not writable or an output path would be an input
    (``path_safety``).
    """
    prep = prepare_batch(inputs, outdir, options, bundle, progress, cancel_event)
    options, outdir, cases, bundle, model = prep.options, prep.outdir, prep.cases, prep.bundle, prep.model
    callback, cancel_event = prep.callback, prep.cancel_event
    from ..engine.warmup import start_warm_up

    start_warm_up(bundle, options.device)  # on a GPU: overlaps CUDA start-up with reading the first case

    started = time.time()
    results: dict[str, CaseResult] = {}
    deferred: list[tuple[int, Case]] = []
    fatal: Optional[OutputError] = None
    base = dict(model_name=model["name"], model_version=model["version"])

    def finish(r: CaseResult) -> None:
        results[r.case] = r
        try:
            write_report(outdir, options, current=results.values())
        except OutputError as err:
            r.warnings.append(f"report not updated: {err}")
        if on_case_done is not None:
            on_case_done(r)

    queue = list(enumerate(cases))
    for attempt in range(2):
        for index, case in queue:
            if fatal is not None:
                finish(CaseResult(case.name, case.input, "not-run", f"not run: {fatal}", "output",
                                  **base, finished_at=_now()))
                continue
            if cancel_event is not None and cancel_event.is_set():
                raise Cancelled("Batch cancelled by the user; completed cases are kept.")
            cp = _CaseProgress(callback, index, len(cases), case.name)
            try:
                r = _run_case(case, outdir, options, bundle, model, cp, cancel_event, resume, overwrite,
                              lock_wait=options.lock_wait if attempt == 1 else None, batch_started=started)
            except CaseLocked as locked:
                if attempt == 0:
                    deferred.append((index, case))
                    continue
                r = locked_result(case, locked.holder, socket.gethostname(), outdir, options, base)
            if r.status == "failed" and r.error_kind == "output" and getattr(r, "_enospc", False):
                fatal = OutputError(r.error)
            finish(r)
        queue, deferred = deferred, []
        if not queue:
            break
    if callback is not None:
        callback(1.0, "done")
    return [results[c.name] for c in cases if c.name in results]


def _remove_outputs(case_dir: Path, case: str) -> None:
    """Every output file a run of ``case`` may have written (all formats and options)."""
    for options in (BatchOptions(label_format="nifti", dicom_sr=True, probabilities=True, uncertainty=True),
                    BatchOptions(label_format="nrrd")):
        for p in output_paths(case_dir.parent, case, options, "dicom").values():
            unlink_quietly(p)


def _claim(case: Case, outdir: Path, progress: _CaseProgress, cancel_event: Optional[threading.Event],
           lock_wait: Optional[float]) -> Path:
    """Claim the case's lock. ``lock_wait`` None: raise CaseLocked at once; otherwise wait
    up to that many seconds for a live holder on this host (a suspended one never lets go)."""
    case_dir = outdir / case.name
    deadline = time.monotonic() + (lock_wait or 0.0)
    while True:
        try:
            return claim_case(outdir, case_dir)
        except CaseLocked as locked:
            same_host = locked.holder.get("host") == socket.gethostname()
            if lock_wait is None or not same_host or time.monotonic() >= deadline:
                raise
            if cancel_event is not None and cancel_event.is_set():
                raise Cancelled("Batch cancelled by the user; completed cases are kept.") from None
            left = deadline - time.monotonic()
            progress(0.0, f"{locked}; waiting up to {left:.0f} s more")
            time.sleep(min(0.2, max(left, 0.0)))


def _run_case(case: Case, outdir: Path, options: BatchOptions, bundle: Any, model: dict,
              progress: _CaseProgress, cancel_event: Optional[threading.Event],
              resume: bool, overwrite: bool, lock_wait: Optional[float] = None,
              batch_started: float = 0.0) -> CaseResult:
    case_dir = outdir / case.name
    t0 = time.perf_counter()
    base = dict(model_name=model["name"], model_version=model["version"])
    try:
        lock = _claim(case, outdir, progress, cancel_event, lock_wait)
    except OutputError as err:
        r = CaseResult(case.name, case.input, "failed", str(err), "output", **base, finished_at=_now())
        r._enospc = getattr(err, "errno", None) == errno.ENOSPC  # type: ignore[attr-defined]
        return r

    completed = False
    writing = False
    unusable = False
    try:
        remove_temp_files(case_dir)
        if case.error:
            raise InputError(case.error)
        fp = input_fingerprint(case)  # InputError for a FIFO/device: never read, never hashed
        if resume and not overwrite:
            done, _why, manifest = check_done(case_dir, fp, model, options, case.kind)
            if done:
                prev = manifest.get("result", {})
                # Completed after this batch started, not by it: a concurrent run computed it.
                by_other = float(manifest.get("finished_epoch", 0) or 0) >= batch_started
                status = "done-by-other-run" if by_other else "skipped"
                r = CaseResult(case.name, case.input, status,
                               "computed meanwhile by a concurrent run" if by_other else "", "", timings={},
                               statistics=prev.get("statistics", {}), outputs=prev.get("outputs", {}),
                               warnings=prev.get("warnings", []), **base)
                r.seconds_total = time.perf_counter() - t0
                r.finished_at = _now()
                write_json_atomic(case_dir / RESULT_NAME, r.to_dict())
                completed = True
                return r
        paths = output_paths(outdir, case.name, options, case.kind)
        if not overwrite and not resume and (case_dir / DONE_NAME).exists():
            raise OutputError(
                f"results already exist in {case_dir}. Use --overwrite to replace them or --resume to keep them."
            )
        _check_weights_once(bundle)  # before the first case that runs; an unusable model stops the batch
        unlink_quietly(case_dir / DONE_NAME)  # invalidate first: from now on the case is "to redo"
        writing = True
        _remove_outputs(case_dir, case.name)  # a killed run's leftovers, or outputs of other options
        r = segment_case(case, case_dir, paths, outdir, options, bundle, progress, cancel_event, fp, base)
        r.seconds_total = time.perf_counter() - t0
        r.finished_at = _now()
        write_json_atomic(case_dir / RESULT_NAME, r.to_dict())
        manifest = done_manifest(case, fp, model, options, paths, r)
        manifest["finished_epoch"] = time.time()
        write_json_atomic(case_dir / DONE_NAME, manifest)  # LAST
        completed = True
        return r
    except (Cancelled, KeyboardInterrupt):
        if writing:  # no partial files: the interrupted case leaves only its record
            _remove_outputs(case_dir, case.name)
            _record_quietly(case_dir, CaseResult(
                case.name, case.input, "failed", "cancelled before completion; rerun to redo this case",
                "cancelled", **base, finished_at=_now()))
        raise
    except _UnusableModel as err:
        unusable = True
        raise err.error from None
    except Exception as err:  # per-case isolation: record and go on
        r = CaseResult(case.name, case.input, "failed", **base)
        if isinstance(err, LiverSegError):
            r.error, r.error_kind = str(err), getattr(err, "code", "error")
            r._enospc = getattr(err, "errno", None) == errno.ENOSPC or isinstance(  # type: ignore[attr-defined]
                err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
        elif isinstance(err, MemoryError):
            r.error, r.error_kind = "out of memory: close other programs, use --fast or a smaller ROI", "resource"
        elif isinstance(err, OSError) and err.errno == errno.ENOSPC:
            r.error, r.error_kind = str(as_output_error(err, case_dir)), "output"
            r._enospc = True  # type: ignore[attr-defined]
        else:
            r.error = f"unexpected error ({type(err).__name__}: {err})"
            r.error_kind = "internal"
        r.traceback = traceback.format_exc()
        r.seconds_total = time.perf_counter() - t0
        r.finished_at = _now()
        if writing:  # a failed case leaves no outputs that could pass for results
            _remove_outputs(case_dir, case.name)
        completed = _record_quietly(case_dir, r)
        return r
    finally:
        if not completed:
            remove_temp_files(case_dir)
        release_case(lock)
        if unusable:
            try:
                case_dir.rmdir()  # created only to hold the lock: leave no trace of a run that never started
            except OSError:
                pass


class _UnusableModel(Exception):
    """Carries the model's BundleError past the per-case isolation: no case can run with it."""

    def __init__(self, error: BundleError):
        super().__init__(str(error))
        self.error = error


def _check_weights_once(bundle: Any) -> None:
    """The bundle's weights against its architecture, once per bundle, and only when a case
    needs the network (a resumed batch with nothing to do never imports torch)."""
    check = getattr(bundle, "check_weights", None)
    if check is None or getattr(bundle, "_weights_checked", False):
        return
    try:
        check()
    except BundleError as err:
        raise _UnusableModel(err) from err
    bundle._weights_checked = True


def _record_quietly(case_dir: Path, r: CaseResult) -> bool:
    try:
        write_json_atomic(case_dir / RESULT_NAME, r.to_dict())
        return True
    except OutputError:
        return False
