"""Options of a batch run, and the output file names they imply for a case."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union


DICOM_KINDS = ("dicom", "dicomweb")


@dataclass
class BatchOptions:
    """Options of a batch run. Only the *output-affecting* ones are part of the resume
    key (fast, roi, format, seg_nrrd, overlay, dicom_seg, dicom_sr, push); device/threads/batch_size
    do not change what is written, so changing them does not force a redo."""

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
    # DICOM inputs (folders and DICOMweb URLs): a DICOM SEG (default) and a TID 1500 SR beside it;
    # ``push``: store them back in the PACS study (STOW-RS) for DICOMweb inputs.
    dicom_seg: bool = True
    dicom_sr: bool = False
    push: bool = False
    # Liver/tumour probability maps (uint8 0-255) and a test-time-augmentation uncertainty map with a
    # confidence score (engine/uncertainty.py); off by default.
    probabilities: bool = False
    uncertainty: bool = False

    def resume_key(self, kind: str = "file") -> dict:
        """The output-affecting options for a case of input ``kind`` (DICOM options: DICOM inputs only,
        so toggling them never redoes a NIfTI case)."""
        return {
            "fast": bool(self.fast),
            "roi_lps": [list(map(float, x)) for x in self.roi_lps] if self.roi_lps else None,
            "label_format": self.label_format,
            "write_seg_nrrd": bool(self.write_seg_nrrd),
            "overlay": bool(self.overlay),
            **(self._dicom_key() if kind in DICOM_KINDS else {}),
            # only when asked for, so results of runs before these options stay current
            **({"probabilities": True} if self.probabilities else {}),
            **({"uncertainty": True} if self.uncertainty else {}),
        }

    def _dicom_key(self) -> dict:
        """Only what differs from the defaults, so results of runs before these options stay current."""
        key = {}
        if not self.dicom_seg:
            key["dicom_seg"] = False
        if self.dicom_sr:
            key["dicom_sr"] = True
        if self.push:
            key["push"] = True
        return key

    def segment_options(self):
        from ..engine import pipeline

        return pipeline.SegmentOptions(
            device=self.device, fast=self.fast, roi_lps=self.roi_lps,
            threads=self.threads, batch_size=self.batch_size,
            probabilities=self.probabilities, uncertainty=self.uncertainty,
        )


def output_paths(outdir: Path, case: str, options: BatchOptions, kind: str = "file") -> dict[str, Path]:
    """Output file of each kind (label, stats, lesions, seg, overlay, dicom_seg, dicom_sr) for ``case``
    under ``outdir``; ``kind``: the case's input kind (DICOM SEG/SR only for DICOM inputs)."""
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
    if options.probabilities:
        paths["liver_probability"] = d / f"{case}_liver_prob.nii.gz"
        paths["tumor_probability"] = d / f"{case}_tumor_prob.nii.gz"
    if options.uncertainty:
        paths["uncertainty"] = d / f"{case}_uncertainty.nii.gz"
    if kind in DICOM_KINDS and options.dicom_seg:
        paths["dicom_seg"] = d / f"{case}_seg.dcm"
        if options.dicom_sr:
            paths["dicom_sr"] = d / f"{case}_sr.dcm"
    return paths
