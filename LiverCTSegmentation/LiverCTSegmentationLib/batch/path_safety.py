"""Inputs and outputs never share a path: checked for the whole batch before any work.

A CT named ``report.csv``, ``--report`` pointed at the CT, an output folder inside a
DICOM series folder, or a case folder that is itself an input folder would all have a
batch write over (or into) what the user owns. ``plan_outputs`` finds each of these
before a single case runs and refuses the run (rc 2 in the CLI) with what to change.
A case whose *name* merely collides with the report (``report.csv.nii.gz``) is renamed.
"""
from __future__ import annotations

import os
from pathlib import Path

from .cases import Case
from ..engine.errors import OutputError
from ..engine.input_files import detached_data_files
from .locking import FOLDER_LOCK_NAME
from .options import BatchOptions, output_paths
from .report import report_path

RENAMED_SUFFIX = "_case"


def _real(p: Path) -> Path:
    try:
        return Path(os.path.realpath(p))
    except (OSError, RuntimeError, ValueError):
        return p.absolute()


def _inside(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def _input_paths(case: Case) -> list[Path]:
    if case.error or case.kind == "dicomweb":  # a PACS series is no local path
        return []
    paths = [_real(case.path)]
    if case.kind == "file":
        try:
            paths += [_real(f) for f in detached_data_files(case.path)]
        except Exception:  # noqa: BLE001 - an unreadable header fails its own case later
            pass
    return paths


def _rename_reserved(cases: list[Case], reserved: set[str]) -> None:
    taken = {c.name.casefold() for c in cases}
    for c in cases:
        if c.name.casefold() in reserved:
            name = c.name + RENAMED_SUFFIX
            while name.casefold() in taken or name.casefold() in reserved:
                name += "_"
            taken.add(name.casefold())
            c.name = name


def plan_outputs(cases: list[Case], outdir: Path, options: BatchOptions) -> Path:
    """Rename cases whose folder would be the report; raise OutputError if any output
    path (report, case folder, case file) is an input or lies inside a DICOM input folder.
    Returns the report's path."""
    report = _real(report_path(outdir, options))
    out_real = _real(outdir)
    reserved = {FOLDER_LOCK_NAME.casefold()}
    if report.parent == out_real:
        reserved.add(report.name.casefold())
    _rename_reserved(cases, reserved)

    inputs: dict[Path, Case] = {}
    dicom_folders: dict[Path, Case] = {}
    for c in cases:
        for p in _input_paths(c):
            (dicom_folders if c.kind == "dicom" else inputs)[p] = c

    def refuse(out: Path, what: str) -> None:
        if out in inputs:
            raise OutputError(
                f"{what} '{out}' is also an input ('{inputs[out].path}'); it would be overwritten. "
                "Nothing was written. Choose another -o/--report, or rename the input.")
        for folder, c in dicom_folders.items():
            if _inside(out, folder):
                raise OutputError(
                    f"{what} '{out}' is inside the DICOM input folder '{c.path}', which liverseg only reads. "
                    "Nothing was written. Choose an output folder (-o) outside it.")

    refuse(out_real, "the output folder")
    refuse(report, "the report")
    for c in cases:
        case_dir = out_real / c.name
        refuse(case_dir, f"the output folder of case '{c.name}'")
        for p in output_paths(out_real, c.name, options, c.kind).values():
            refuse(p, f"the output file of case '{c.name}'")
    return report
