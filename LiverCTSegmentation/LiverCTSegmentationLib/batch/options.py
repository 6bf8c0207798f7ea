"""Options of a batch run, and the output file names they imply for a case."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union


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
    # Seconds to wait, at the end of a batch, for a case another run on this host holds
    # (a suspended run would otherwise block forever); then the case is reported "locked".
    lock_wait: float = 60.0

    def resume_key(self) -> dict:
        return {
            "fast": bool(self.fast),
            "roi_lps": [list(map(float, x)) for x in self.roi_lps] if self.roi_lps else None,
            "label_format": self.label_format,
            "write_seg_nrrd": bool(self.write_seg_nrrd),
            "overlay": bool(self.overlay),
        }

    def segment_options(self):
        from ..engine import pipeline

        return pipeline.SegmentOptions(
            device=self.device, fast=self.fast, roi_lps=self.roi_lps,
            threads=self.threads, batch_size=self.batch_size,
        )


def output_paths(outdir: Path, case: str, options: BatchOptions) -> dict[str, Path]:
    """Output file of each kind (label, stats, lesions, seg, overlay) for ``case`` under ``outdir``."""
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
