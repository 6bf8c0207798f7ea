"""The record of one case's latest run (``<case>/.result.json``) and its report row."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

RESULT_NAME = ".result.json"
STAGES = ("read", "check", "preprocess", "coarse", "fine", "postprocess", "resample", "statistics", "write",
          "overlay")
OUTPUT_KEYS = ("label", "seg", "stats", "lesions", "overlay")


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
