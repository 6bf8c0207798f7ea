"""Shared helpers for the benchmarks: phantom CTs on disk, the model to use, and
measuring a command in its own process (wall time + that process's peak RSS).

Peak RSS comes from ``os.wait4``: the kernel's ru_maxrss of exactly that child,
so variants measured one after another do not contaminate each other.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
LIB_PARENT = ROOT / "LiverCTSegmentation"
TESTING = ROOT / "Testing"
for _p in (str(LIB_PARENT), str(TESTING)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

FULL_SHAPE = (300, 512, 512)  # k, j, i
FULL_SPACING = (0.8, 0.8, 1.0)  # i, j, k mm
QUICK_SHAPE = (100, 256, 256)
QUICK_SPACING = (1.6, 1.6, 3.0)  # same field of view class as the full CT, fewer voxels


@dataclass
class Measured:
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LIB_PARENT), str(TESTING), env.get("PYTHONPATH", "")])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def measure(cmd: Sequence[str], threads: int, timeout: float = 3600.0) -> Measured:
    """Run ``cmd`` in a child process; wall time and the child's own peak RSS (MB)."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=out, stderr=err, env=child_env(threads))
        deadline = t + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        # ru_maxrss is KiB on Linux, bytes on macOS
        rss_mb = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
        return Measured(wall, rss_mb, proc.returncode, out.read(), err.read())


def write_phantom(folder: Path, shape_kji=FULL_SHAPE, spacing=FULL_SPACING, seed: int = 7) -> tuple[Path, Path]:
    """Write a phantom CT and its exact truth as .nii.gz (reused when already there)."""
    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom

    tag = f"{'x'.join(map(str, shape_kji[::-1]))}_s{seed}"
    ct_path, truth_path = folder / f"ct_{tag}.nii.gz", folder / f"truth_{tag}.nii.gz"
    if not (ct_path.exists() and truth_path.exists()):
        ct, label = make_phantom(seed, shape_kji=shape_kji, spacing=spacing, orientation="LPS", n_lesions=3,
                                 fov="full")
        io.write_volume(ct, ct_path, overwrite=True)
        io.write_volume(label, truth_path, overwrite=True)
    return ct_path, truth_path


def resolve_bundle(model: Optional[str], scratch: Path) -> tuple[Path, str]:
    """(bundle folder, note). Falls back to the deterministic box bundle, loudly, when no trained model exists."""
    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.engine.errors import LiverSegError

    try:
        path = models.resolve_model(model)
        return Path(path), ""
    except LiverSegError as err:
        if model is not None:
            raise
        from bundle_fixtures import make_box_bundle

        note = ("!!! NO TRAINED MODEL FOUND (" + str(err).split(".")[0] + "). Using the test-only threshold "
                "'box' bundle: networks are 1x1x1 convolutions, so network time, the baseline ratio and Dice "
                "are NOT representative. Re-run with --model <trained bundle> for real numbers. !!!")
        return make_box_bundle(scratch / "box_bundle", liver_hu=(60.0, 200.0), tumor_hu=None), note


def machine_line(threads: int) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"host {platform.node()} | {os.cpu_count()} logical CPUs ({cpu}) | threads {threads} | GPU {gpu} | "
            f"python {platform.python_version()} | torch {torch.__version__}")


def dice(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def dice_pair(pred_path: Path, truth_path: Path) -> tuple[float, float]:
    """(liver incl. tumour, tumour) Dice of a labelmap file against the truth file (same grid)."""
    from LiverCTSegmentationLib.engine import io

    p, t = io.read_volume(pred_path).array, io.read_volume(truth_path).array
    return dice(p > 0, t > 0), dice(p == 2, t == 2)


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[c if isinstance(c, str) else f"{c:.2f}" if isinstance(c, float) else str(c) for c in r]
                        for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
    return "\n".join(lines)


def cli_json(stdout: str) -> list[dict]:
    """The ``liverseg --json`` result list (stdout may hold nothing else)."""
    start = stdout.find("[")
    return json.loads(stdout[start:]) if start >= 0 else []


def report(text: str, save: bool) -> None:
    """Print a benchmark section; with ``save``, append it (timestamped) to bench/RESULTS.md."""
    print(text)
    if save:
        with open(Path(__file__).parent / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n\n<!-- {time.strftime('%Y-%m-%d %H:%M')} -->\n{text}\n")


def add_case_args(ap) -> None:
    """--quick, --workdir and --save, shared by the benchmarks that run on the phantom CT."""
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_SHAPE[::-1]} voxels instead of 512x512x300")
    ap.add_argument("--workdir", default="/tmp/liverct-bench")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")


def case_from_args(args) -> tuple[Path, tuple, tuple, Path, Path]:
    """(workdir, shape_kji, spacing, CT file, truth file) for ``add_case_args``' options."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    shape, spacing = (QUICK_SHAPE, QUICK_SPACING) if args.quick else (FULL_SHAPE, FULL_SPACING)
    ct, truth = write_phantom(work, shape, spacing)
    return work, shape, spacing, ct, truth
