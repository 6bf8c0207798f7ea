"""MLflow tracking (local file store by default) with a no-op fallback.

Only rank 0 creates a Tracker with ``enabled=True``; other ranks get a no-op.
Environment facts (versions, git revision, CPU/GPU) are logged as tags so a
run can be reproduced or explained later.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .config import flatten


def environment_info() -> dict[str, str]:
    """Library versions, git revision, CPU and GPU description."""
    import numpy
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "cuda": torch.version.cuda or "none",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    for mod in ("monai", "SimpleITK", "mlflow"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages
            info[mod] = "missing"
    try:
        root = Path(__file__).resolve().parents[1]
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True, timeout=5)
        info["git_revision"] = (rev.stdout.strip() or "unknown") + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001 - git absent is fine
        info["git_revision"] = "unknown"
    return info


class Tracker:
    """Thin MLflow wrapper; every method is a no-op when disabled or mlflow is missing."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tracking_uri: str | None = None,
                 experiment: str = "liverct", run_name: str | None = None):
        self.run_dir = Path(run_dir)
        self._mlflow = None
        if not enabled:
            return
        try:
            import mlflow
        except ImportError:
            return
        uri = tracking_uri or (self.run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow >= 3.x refuses the file store unless asked; the contract's default is a local
            # file store (no server, no database). sqlite:///... URIs work too.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=run_name)
        self._mlflow = mlflow
        self.uri = uri

    @property
    def active(self) -> bool:
        return self._mlflow is not None

    def log_config(self, cfg: dict) -> None:
        if not self.active:
            return
        params = {k: str(v)[:500] for k, v in flatten(cfg).items()}
        # MLflow limits a batch to 100 params.
        items = list(params.items())
        for i in range(0, len(items), 100):
            self._mlflow.log_params(dict(items[i:i + 100]))
        self._mlflow.set_tags({f"env.{k}": v for k, v in environment_info().items()})

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        if self.active:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: str | Path, subdir: str | None = None) -> None:
        if self.active and Path(path).exists():
            self._mlflow.log_artifact(str(path), artifact_path=subdir)

    def close(self, status: str = "FINISHED") -> None:
        if self.active:
            self._mlflow.end_run(status=status)
            self._mlflow = None
