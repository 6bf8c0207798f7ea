"""File I/O of one case, same process, same file: the .nii.gz read paths and the .seg.nrrd write levels.

Read (512x512x300 int16 phantom CT, 80 MB .nii.gz), median of --repeat runs each:

- ITK alone: ``sitk.ReadImage`` (no stream check: what ITK would give by itself);
- read_volume, ITK path: what it does without ``isal`` (ITK read + full-stream check in a thread);
- the fast path inflating with Python's zlib instead of ISA-L (why the fast path needs ISA-L);
- read_volume, fast path with ISA-L (the default below 4 usable cores);
- read_volume, parallel inflate with rapidgzip on every usable core (the default on 4+ cores).

Write: the labelmap of that CT as .seg.nrrd: whole grid at gzip level 6 (slicerio's usual) and 1, and the
labelled box only at level 1 (ours; every file is read back and compared).
Hand-over: what the Slicer module does on Apply, the CT written to a scratch .nrrd for its background
worker and read back there, gzip-compressed and raw (ours).
Every read is compared voxel for voxel with ITK's, so a faster path that reads wrong fails here.

    OMP_NUM_THREADS=2 python bench/bench_io.py --save
"""
from __future__ import annotations

import argparse
import builtins
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


@contextmanager
def _no_isal():
    real = builtins.__import__

    def blocked(name, *a, **k):
        if name == "isal" or name.startswith("isal."):
            raise ImportError("blocked by bench_io")
        return real(name, *a, **k)

    builtins.__import__ = blocked
    try:
        yield
    finally:
        builtins.__import__ = real


@contextmanager
def _zlib_fast_path():
    """The fast path with Python's gzip/zlib inflating in place of ISA-L."""
    import gzip

    from LiverCTSegmentationLib.engine import nifti_gz

    real = nifti_gz.gunzip
    nifti_gz.gunzip = gzip.decompress
    try:
        yield
    finally:
        nifti_gz.gunzip = real


@contextmanager
def _parallel(on: bool):
    """Force the parallel inflate (rapidgzip) on or off, whatever this machine's core count."""
    from LiverCTSegmentationLib.engine import nifti_gz

    real = nifti_gz.PARALLEL_MIN_CORES
    nifti_gz.PARALLEL_MIN_CORES = 1 if on else 1 << 20
    try:
        yield
    finally:
        nifti_gz.PARALLEL_MIN_CORES = real


@contextmanager
def _serial(ctx=None):
    with _parallel(False):
        if ctx is None:
            yield
        else:
            with ctx():
                yield


def _median_s(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    C.add_case_args(ap)
    args = ap.parse_args(argv)

    import numpy as np
    import SimpleITK as sitk

    from LiverCTSegmentationLib.engine import io, segfile

    work, shape, spacing, ct, truth = C.case_from_args(args)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ct)))
    io.read_volume(ct)  # imports and page cache warm for every variant alike

    try:
        import isal  # noqa: F401
        has_isal = True
    except ImportError:
        has_isal = False

    try:
        import rapidgzip  # noqa: F401
        has_rapidgzip = True
    except ImportError:
        has_rapidgzip = False
    from LiverCTSegmentationLib.engine.device import usable_cores
    from LiverCTSegmentationLib.engine.nifti_gz import PARALLEL_MIN_CORES

    cores = usable_cores()
    variants = [("ITK alone (sitk.ReadImage, no stream check)", lambda: sitk.ReadImage(str(ct)), None)]
    variants.append(("read_volume without isal: ITK + stream check in a thread", lambda: io.read_volume(ct),
                     lambda: _serial(_no_isal)))
    if has_isal:
        variants.append(("fast path inflating with zlib (not used)", lambda: io.read_volume(ct),
                         lambda: _serial(_zlib_fast_path)))
        variants.append((f"read_volume, fast path, ISA-L (default below {PARALLEL_MIN_CORES} cores)",
                         lambda: io.read_volume(ct), _serial))
    if has_rapidgzip:
        variants.append((f"read_volume, parallel inflate, rapidgzip on {cores} cores (default on "
                         f"{PARALLEL_MIN_CORES}+)", lambda: io.read_volume(ct), lambda: _parallel(True)))
    rows, base = [], None
    for name, fn, ctx in variants:
        if ctx is None:
            sec, out = _median_s(fn, args.repeat)
        else:
            with ctx():
                sec, out = _median_s(fn, args.repeat)
        arr = sitk.GetArrayViewFromImage(out) if isinstance(out, sitk.Image) else out.array
        if not np.array_equal(arr, ref):
            sys.exit(f"{name}: voxels differ from ITK's")
        base = sec if base is None else base
        rows.append([name, sec, f"x{base / sec:.2f}"])

    label = io.read_volume(truth)
    labels = [{"value": 1, "name": "Liver"}, {"value": 2, "name": "Liver tumor"}]
    wrows = []
    for crop, level in ((False, 6), (False, 1), (True, 1)):
        out = work / f"bench_io_level{level}{'_crop' if crop else ''}.seg.nrrd"
        sec, _ = _median_s(lambda: segfile.write_seg_nrrd(label, labels, out, overwrite=True,
                                                          compression_level=level, crop=crop), args.repeat)
        back, _ = segfile.read_seg_nrrd(out)
        if not (np.array_equal(back.array, label.array) and back.same_grid(label, atol=1e-6)):
            sys.exit(f"{out.name}: does not read back as the labelmap")
        what = "labelled box only (default)" if crop else "whole grid"
        wrows.append([f"write .seg.nrrd, gzip level {level}, {what}", sec, f"{out.stat().st_size / 1e6:.2f}"])

    # The Slicer module's hand-over to its background worker: the CT written to a scratch .nrrd
    # and read back by the worker (runner.py writes it raw).
    ct_vol = io.read_volume(ct)
    hrows = []
    for compress in (True, False):
        scratch = work / f"bench_io_handover_{'gz' if compress else 'raw'}.nrrd"
        w, _ = _median_s(lambda: io.write_volume(ct_vol, scratch, overwrite=True, compress=compress), args.repeat)
        r, back = _median_s(lambda: io.read_volume(scratch), args.repeat)
        if not np.array_equal(back.array, ref):
            sys.exit(f"{scratch.name}: voxels differ from the CT")
        hrows.append([f"CT to the worker as {'gzip' if compress else 'raw (ours)'} .nrrd: write + read", w, r, w + r,
                      f"{scratch.stat().st_size / 1e6:.0f}"])
    del ct_vol

    lines = [f"## File I/O: {'x'.join(map(str, shape[::-1]))} voxels{' (QUICK)' if args.quick else ''}", "",
             "command: `" + " ".join(["python bench/bench_io.py"] + (argv or sys.argv[1:])) + "`",
             f"machine: {C.machine_line(1)}", f"CT file: {ct.stat().st_size / 1e6:.1f} MB; median of "
             f"{args.repeat} runs; every read equals ITK's voxel for voxel", "",
             C.table(rows, ["read", "seconds", "speed vs ITK alone"]), "",
             C.table(wrows, ["write", "seconds", "MB"]), "",
             C.table(hrows, ["Slicer Apply hand-over", "write s", "read s", "total s", "MB"])]
    if not has_isal:
        lines += ["", "isal is not installed: the two ISA-L fast-path rows are missing."]
    C.report("\n".join(lines), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
