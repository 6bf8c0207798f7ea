"""fast_unet vs the torch module on the real CTs, back to back in one process: labels and CPU seconds.

Single-thread CPU time (``time.process_time`` with torch and ITK on one thread) is what a shared
machine measures reliably; wall time on 2 cores is in bench_real_ct.py. Each variant runs once
untimed (lazy imports, network load, oneDNN kernels), then ``--repeat`` times; the minimum is shown.
Float32 on the CPU (``bf16=False``), the default model; ``--isa avx2`` as in bench_real_ct.py must be
set in the environment by the caller (it acts at torch's start):

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 python bench/bench_executor.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CASES = ("chaos_evalsample", "lits_117crop", "totalseg_example", "totalseg_example_sm")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    args = ap.parse_args(argv)
    import SimpleITK as sitk
    import torch

    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.engine import io, pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    real = C.ROOT.parent / "shared" / "data" / "real"
    if not real.exists():
        print(f"SKIP: {real} is absent.")
        return 0
    torch.set_num_threads(1)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    bundle = ModelBundle.load(models.resolve_model(None))
    opts = pipeline.SegmentOptions(device="cpu", threads=1, bf16=False)
    rows = []
    for case in CASES:
        vol = io.read_volume(real / f"{case}_ct.nii.gz")
        labels, cpu = {}, {}
        for flag in ("0", "1"):
            os.environ["LIVERCT_FAST_UNET"] = flag
            pipeline.segment(vol, bundle, opts)
            runs = []
            for _ in range(max(1, args.repeat)):
                t = time.process_time()
                labels[flag] = pipeline.segment(vol, bundle, opts).labelmap.array
                runs.append(time.process_time() - t)
            cpu[flag] = min(runs)
        a, b = labels["0"], labels["1"]
        rows.append([f"{case} {'x'.join(map(str, vol.size_ijk))}", cpu["0"], cpu["1"],
                     f"{C.dice(a > 0, b > 0):.5f}", f"{C.dice(a == 2, b == 2):.4f}", int((a != b).sum())])
    os.environ.pop("LIVERCT_FAST_UNET", None)
    text = "\n".join([
        "## fast_unet vs torch module: single-thread CPU s per case and labels",
        "", "command: `" + " ".join(["python bench/bench_executor.py"] + list(argv or sys.argv[1:])) + "`",
        f"machine: {C.machine_line(1)}; torch capability {torch.backends.cpu.get_cpu_capability()}",
        "", C.table(rows, ["real CT", "torch module CPU s", "fast_unet CPU s", "liver Dice", "tumour Dice",
                           "differing voxels"])])
    C.report(text, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
