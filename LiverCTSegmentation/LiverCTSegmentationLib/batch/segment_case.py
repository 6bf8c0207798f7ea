"""One case's actual work: read (a DICOMweb case: fetch the series first), check, segment, then
write the label map, Slicer segmentation, DICOM SEG/SR, lesion CSV, overlay and statistics JSON
(each atomically) and, with --push, store the SEG/SR back in the PACS study."""
from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

from .atomic_files import write_csv_atomic, write_json_atomic
from .cases import Case
from ..engine.errors import InputError
from ..engine.progress import Progress
from .options import BatchOptions
from .results import CaseResult

MAP_KEYS = ("liver_probability", "tumor_probability", "uncertainty")  # SegmentationResult.maps -> files
LESION_COLUMNS = ("index", "volume_ml", "longest_axial_diameter_mm", "centroid_x_lps", "centroid_y_lps",
                  "centroid_z_lps")


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


def _overlay_note(err: Exception) -> str:
    if isinstance(err, ImportError):
        return (f"overlay picture not written: {getattr(err, 'name', None) or err} is not installed "
                "(pip install matplotlib, or use --no-overlay)")
    return f"overlay picture not written ({type(err).__name__}: {err}); the segmentation is complete"


def _rel(outdir: Path, p: Path) -> str:
    try:
        return p.relative_to(outdir).as_posix()
    except ValueError:
        return str(p)


def segment_case(case: Case, case_dir: Path, paths: dict[str, Path], outdir: Path, options: BatchOptions,
                 bundle: Any, progress: Callable[[float, str], None], cancel_event: Optional[threading.Event],
                 fp: Optional[dict], base: dict) -> CaseResult:
    """Segment ``case`` and write ``paths``; returns an "ok" CaseResult (exceptions propagate).

    ``progress(fraction of this case, stage)``; ``fp`` is the input fingerprint recorded
    in the stats; ``base`` holds model_name/model_version for the result."""
    if case.kind != "dicomweb":
        if not case.path.exists():
            raise InputError(f"{case.path} does not exist. Check the path.")
        return _segment(case, case.path, paths, outdir, options, bundle, progress, cancel_event, fp, base, 0.0)
    from .dicomweb import fetch_series, parse_url

    # The fetched series lives only as long as this case: the PACS keeps the original.
    with tempfile.TemporaryDirectory(prefix="liverseg-pacs-") as tmp:
        t = time.perf_counter()
        progress(0.0, "fetch from PACS")
        fetch_series(parse_url(case.url), Path(tmp) / "series")
        return _segment(case, Path(tmp) / "series", paths, outdir, options, bundle, progress, cancel_event, fp,
                        base, time.perf_counter() - t)


def _segment(case: Case, source: Path, paths: dict[str, Path], outdir: Path, options: BatchOptions, bundle: Any,
             progress: Callable[[float, str], None], cancel_event: Optional[threading.Event], fp: Optional[dict],
             base: dict, fetch_seconds: float) -> CaseResult:
    from ..engine import checks, io, pipeline

    timings: dict[str, float] = {}
    prog = Progress(progress, cancel_event)

    t = time.perf_counter()
    prog.stage("read", 0.0, 0.05)
    vol = io.read_volume(source)
    timings["read"] = time.perf_counter() - t + fetch_seconds  # reading from a PACS starts with the fetch

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
    # The two compressed files are independent: the .seg.nrrd (pynrrd + zlib, which releases the GIL)
    # is written by a helper thread while ITK writes the labelmap here, on the calling thread.
    with ThreadPoolExecutor(1) as pool:
        seg_job = None
        if "seg" in paths:
            from ..engine import segfile

            seg_job = pool.submit(segfile.write_seg_nrrd, res.labelmap, labels, paths["seg"], True)
        io.write_volume(res.labelmap, paths["label"], overwrite=True)
        if seg_job is not None:
            seg_job.result()  # re-raises its OutputError here
    for key in MAP_KEYS:
        if key in paths:
            if key in res.maps:
                io.write_volume(res.maps[key], paths[key], overwrite=True)
            else:  # e.g. a liver-only model has no tumour map
                del paths[key]
    if "dicom_seg" in paths:
        _write_dicom(vol, res, paths, labels, base, warnings)
    stats = _stats_dict(res.statistics)
    if res.confidence is not None:
        stats["confidence"] = round(float(res.confidence), 4)
    lesions = _lesion_rows(res.statistics)
    write_csv_atomic(paths["lesions"], lesions, LESION_COLUMNS)
    pushed = _push(case, paths) if options.push and case.kind == "dicomweb" else []
    timings["write"] = time.perf_counter() - t
    prog.check()

    if "overlay" in paths:
        t = time.perf_counter()
        prog.stage("overlay", 0.92, 1.0)
        try:
            from .overlay import save_overlay_png

            save_overlay_png(vol, res.labelmap, paths["overlay"], title=case.name, statistics=stats,
                             labels=labels, model=f"{base['model_name']} {base['model_version']}".strip())
        except Exception as err:  # noqa: BLE001 - an optional picture never fails a case
            warnings.append(_overlay_note(err))
            del paths["overlay"]  # not an output of this case (nor of its .done.json)
        timings["overlay"] = time.perf_counter() - t

    r = CaseResult(case.name, case.input, "ok", timings=timings, statistics=stats,
                   outputs={k: _rel(outdir, v) for k, v in paths.items()}, warnings=warnings, **base)
    stats_doc = {
        "case": case.name,
        "input": case.input,
        "input_sha256": (fp or {}).get("sha256"),
        "model": {"name": base["model_name"], "version": base["model_version"],
                  "demo": bool(getattr(bundle, "demo", False))},
        "options": options.resume_key(case.kind),
        "statistics": stats,
        "lesions": lesions,
        "warnings": warnings,
        "timings_s": timings,
        "geometry": {"size_ijk": list(vol.size_ijk), "spacing": list(vol.spacing), "origin": list(vol.origin),
                     "direction": vol.direction.tolist()},
    }
    if pushed:
        stats_doc["pacs"] = {"stored": pushed, "study_url": case.url}
    write_json_atomic(paths["stats"], stats_doc)  # stats last among outputs; timings of "overlay" included
    return r


def _write_dicom(vol: Any, res: Any, paths: dict[str, Path], labels: list, base: dict, warnings: list) -> None:
    """The DICOM SEG (and SR) over the source series; without highdicom a note, never a failed case."""
    try:
        from ..engine import dicom_seg

        files = dicom_seg.series_files(vol)
        seg = dicom_seg.write_dicom_seg(res.labelmap, files, labels, paths["dicom_seg"], base["model_name"],
                                        base["model_version"], overwrite=True)
        if "dicom_sr" in paths:
            from ..engine import dicom_sr

            dicom_sr.write_dicom_sr(seg, res.statistics, dicom_seg.read_source_headers(files), paths["dicom_sr"],
                                    base["model_name"], base["model_version"], overwrite=True, labels=labels)
    except ImportError as err:
        warnings.append(f"DICOM SEG not written: {getattr(err, 'name', None) or err} is not installed "
                        "(pip install highdicom, or use --no-dicom-seg)")
        paths.pop("dicom_seg", None)
        paths.pop("dicom_sr", None)


def _push(case: Case, paths: dict[str, Path]) -> list[str]:
    """STOW-RS the SEG (and SR) into the case's PACS study; returns the stored files' names."""
    from .dicomweb import parse_url, push

    files = [paths[k] for k in ("dicom_seg", "dicom_sr") if k in paths]
    if not files:
        raise InputError("--push has nothing to store: the DICOM SEG was not written (--no-dicom-seg or "
                         "highdicom missing). Drop --no-dicom-seg or install highdicom.")
    push(parse_url(case.url), files)
    return [f.name for f in files]
