"""Background segmentation worker: run as a script by ``PythonSlicer`` (or any Python with the engine).

    PythonSlicer worker.py --input IN.nrrd --output-dir DIR [--model M] [--device auto] [--fast]
                           [--roi-lps x0 y0 z0 x1 y1 z1] [--threads N]
    PythonSlicer worker.py --serve CONTROL_DIR [--idle-seconds S]     (kept worker, see ``serve``)

Talks to the GUI only through stdout lines ``LIVERCT {json}`` (see
``runner.WorkerProtocol``) and files in ``--output-dir``:
``labelmap.nrrd`` (uint8, on the input grid) and ``statistics.json``.
Exit status: 0 done, 2 user-actionable error (message in an ``error`` event),
3 cancelled, 1 unexpected bug (traceback on stderr). No Slicer, no Qt.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

PREFIX = "LIVERCT "


def emit(event: str, **data) -> None:
    print(PREFIX + json.dumps({"event": event, **data}, default=_jsonable), flush=True)


def _jsonable(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def _import_engine():
    # worker.py lives in <dir>/LiverCTSegmentationLib/slicerui/; make the package importable.
    lib_parent = str(Path(__file__).resolve().parents[2])
    if lib_parent not in sys.path:
        sys.path.insert(0, lib_parent)


def parse_args(argv):
    p = argparse.ArgumentParser(description="LiverCTSegmentation background worker")
    p.add_argument("--input")
    p.add_argument("--output-dir")
    p.add_argument("--model", default="")
    p.add_argument("--device", default="auto")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--roi-lps", type=float, nargs=6, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--uncertainty", action="store_true")
    p.add_argument("--serve", metavar="DIR", help="kept-worker mode: run the jobs dropped into DIR (see serve)")
    p.add_argument("--idle-seconds", type=float, default=900.0)
    args = p.parse_args(argv)
    if args.roi_lps is not None:
        args.roi_lps = list(args.roi_lps)
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _import_engine()
    if args.serve:
        return serve(Path(args.serve), args.idle_seconds)
    if not args.input or not args.output_dir:
        emit("error", code="bug", message="worker.py needs --input and --output-dir (or --serve DIR).")
        return 1
    # One job, then exit: freed memory is better reused by the next stage than given back
    # (engine/heap.py). A kept worker (--serve) trims instead: it idles between jobs.
    from LiverCTSegmentationLib.engine.heap import keep_freed_memory

    keep_freed_memory()
    return run_job(vars(args), {})


def _cached_bundle(model: str, bundles: dict):
    """The bundle for ``model``, loaded once per worker (a kept worker reuses its networks on the GPU).
    Only the last model used is kept, so switching models does not pile them up in memory."""
    from LiverCTSegmentationLib.slicerui.modelchoice import load_bundle

    if model not in bundles:
        bundles.clear()
        bundles[model] = load_bundle(model or None)
    return bundles[model]


def serve(control_dir: Path, idle_seconds: float) -> int:
    """Kept-worker mode: run each job the runner drops into ``control_dir`` as ``job.json``.

    Python, torch, the model and the GPU stay loaded between jobs, so only the first Apply of a
    Slicer session pays for starting them. The worker ends when ``control_dir`` disappears (the
    runner stopped it) or after ``idle_seconds`` without a job. Cancel kills the process.
    """
    bundles: dict = {}
    emit("ready", pid=os.getpid())
    last = time.monotonic()
    job_file = control_dir / "job.json"
    while control_dir.is_dir() and time.monotonic() - last < idle_seconds:
        if not job_file.is_file():
            time.sleep(0.02)
            continue
        try:
            job = json.loads(job_file.read_text(encoding="utf-8"))
            job_file.unlink()
        except (OSError, ValueError) as e:
            emit("error", code="bug", message=f"Unreadable job file: {e}")
            return 1
        run_job(job, bundles)
        last = time.monotonic()
    return 0


def run_job(job: dict, bundles: dict) -> int:
    """One segmentation: ``job`` has input, output_dir, model, device, fast, roi_lps, threads.
    Returns the one-shot exit status (0 done, 2 user-actionable error, 3 cancelled, 1 bug)."""
    from LiverCTSegmentationLib.engine import checks, io, pipeline
    from LiverCTSegmentationLib.engine.errors import Cancelled, LiverSegError
    from LiverCTSegmentationLib.engine.progress import Progress

    t0 = time.time()
    last = [-1.0, ""]

    def on_progress(fraction: float, stage: str) -> None:
        # Throttle: at most one line per 1% or per stage change.
        if stage != last[1] or fraction - last[0] >= 0.01 or fraction >= 1.0:
            last[0], last[1] = fraction, stage
            emit("progress", fraction=round(float(fraction), 4), stage=stage)

    device = job.get("device") or "auto"
    try:
        emit("progress", fraction=0.0, stage="loading")
        bundle = _cached_bundle(str(job.get("model") or ""), bundles)
        from LiverCTSegmentationLib.engine.warmup import start_warm_up

        start_warm_up(bundle, device)  # on a GPU: CUDA starts while the input is read
        vol = io.read_volume(job["input"])
        warnings = list(checks.check_volume(vol))
        for w in warnings:
            emit("warning", message=w)
        roi = None
        if job.get("roi_lps"):
            roi = (tuple(job["roi_lps"][:3]), tuple(job["roi_lps"][3:]))
        options = pipeline.SegmentOptions(device=device, fast=bool(job.get("fast")), roi_lps=roi,
                                          threads=job.get("threads"), uncertainty=bool(job.get("uncertainty")))
        res = pipeline.segment(vol, bundle, options, progress=Progress(on_progress))
        out = Path(job["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        # Uncompressed scratch file: the runner imports it at once and removes the folder.
        label_path = io.write_volume(res.labelmap, out / "labelmap.nrrd", overwrite=True, compress=False)
        stats = res.statistics.to_dict() if hasattr(res.statistics, "to_dict") else res.statistics
        extra = {}
        if res.confidence is not None:
            stats = dict(stats or {}, confidence=float(res.confidence))
        if "uncertainty" in res.maps:
            extra["uncertainty"] = str(io.write_volume(res.maps["uncertainty"], out / "uncertainty.nrrd",
                                                       overwrite=True, compress=False))
        (out / "statistics.json").write_text(json.dumps(stats, default=_jsonable), encoding="utf-8")
        for w in getattr(res, "warnings", []) or []:
            if w not in warnings:
                emit("warning", message=w)
        emit("done", labelmap=str(label_path), statistics=stats, labels=bundle.labels,
             model=f"{bundle.name} {bundle.version}", demo=bool(bundle.demo),
             timings=getattr(res, "timings", {}), seconds=round(time.time() - t0, 2), **extra)
        return 0
    except Cancelled as e:
        emit("error", code="cancelled", message=str(e))
        return 3
    except LiverSegError as e:
        emit("error", code=getattr(e, "code", "error"), message=str(e))
        return 2
    except MemoryError:
        emit("error", code="resource", message="Out of memory. Close other programs, use an ROI, "
                                                "or tick 'Fast' to segment at lower resolution.")
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: readable line + traceback on stderr
        traceback.print_exc()
        emit("error", code="bug", message=f"Unexpected error: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    sys.exit(main())
