"""The record of one case's latest run (``<case>/.result.json``) and its report row."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

RESULT_NAME = ".result.json"
DONE_NAME = ".done.json"  # the completion manifest (see resume), written last
STAGES = ("read", "check", "preprocess", "coarse", "fine", "postprocess", "resample", "statistics", "write",
          "overlay")
OUTPUT_KEYS = ("label", "seg", "stats", "lesions", "overlay", "dicom_seg", "dicom_sr", "liver_probability",
               "tumor_probability", "uncertainty")
# The true status of a case in a run. Only the first three mean "results are there".
STATUSES = {
    "ok": "segmented by this run",
    "skipped": "already done by an earlier run (input, model and options verified)",
    "done-by-other-run": "computed by a concurrent run while this one waited for it",
    "failed": "tried and failed (see error)",
    "locked": "not run: another run holds the case's lock",
    "not-run": "not run: the batch stopped (e.g. the disk is full)",
}
DONE_STATUSES = ("ok", "skipped", "done-by-other-run")


@dataclass
class CaseResult:
    case: str
    input: str
    status: str  # one of STATUSES
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
        return self.status in DONE_STATUSES

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
        for k in ("liver_ml", "tumor_count", "tumor_ml", "burden_percent", "confidence"):
            v = self.statistics.get(k, "")
            row[k] = f"{v:.3f}" if isinstance(v, float) else v
        row["model_name"], row["model_version"] = self.model_name, self.model_version
        for key in OUTPUT_KEYS:
            row[f"{key}_path"] = self.outputs.get(key, "")
        row["warnings"] = " | ".join(self.warnings)
        row["finished_at"] = self.finished_at
        return row
