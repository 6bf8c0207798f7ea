"""``report.csv``: one row per case folder, rebuilt from the per-case ``.result.json``
records under the folder mutex after every case, and written atomically."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable

from .atomic_files import unlink_quietly, write_bytes_atomic
from .locking import folder_mutex
from .options import BatchOptions
from .results import DONE_NAME, RESULT_NAME, STAGES, CaseResult

REPORT_COLUMNS = (
    ["case", "input", "status", "error"]
    + [f"seconds_{s}" for s in STAGES]
    + ["seconds_total", "liver_ml", "tumor_count", "tumor_ml", "burden_percent", "confidence",
       "model_name", "model_version", "label_path", "seg_path", "stats_path", "lesions_path",
       "overlay_path", "dicom_seg_path", "dicom_sr_path", "liver_probability_path", "tumor_probability_path",
       "uncertainty_path", "warnings", "finished_at"]
)


def collect_results(outdir: Path, current: Iterable[CaseResult] = ()) -> list[CaseResult]:
    """All per-case records under ``outdir`` (the report describes the folder); ``current``
    (this run's results, e.g. "locked" cases whose folder holds another run's record)
    replace what the folders say for those cases."""
    mine = {r.case: r for r in current}
    results = list(mine.values())
    try:
        dirs = sorted(p for p in outdir.iterdir() if p.is_dir())
    except OSError:
        return results
    for d in dirs:
        if d.name in mine:
            continue
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


def write_report(outdir: Path, options: BatchOptions, current: Iterable[CaseResult] = ()) -> Path:
    """Rebuild the CSV from the per-case records, atomically, under the folder mutex."""
    path = report_path(outdir, options)
    with folder_mutex(outdir):
        if path.parent == outdir:
            for p in outdir.glob(f"{path.name}.tmp-*"):
                unlink_quietly(p)  # left by a killed run; safe: writers hold the mutex
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in collect_results(outdir, current):
            w.writerow(r.report_row())
        write_bytes_atomic(path, buf.getvalue().encode("utf-8"))
    return path
