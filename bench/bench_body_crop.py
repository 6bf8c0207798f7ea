"""Would cropping the coarse search to the body earn its place? Time and labels on the real CTs.

The coarse pass runs over the whole CT at 3 mm; air around the body costs network time. This segments
each real CT twice per round in one process, ``--repeat`` rounds: as the pipeline does, and with the
coarse search cropped to the box of voxels above ``--hu`` HU plus ``--margin-mm`` (through
``SegmentOptions.roi_lps``, the region-of-interest path, so the engine is unchanged). Shown per CT: the
body box's share of the CT, the coarse stage (with its preprocessing) and the total of the last round
both ways, and the labels of the crop against the pipeline's (liver and tumour Dice). The issue's bar for
a speed change is liver Dice >= 0.999 on real CTs. The process keeps freed memory, as ``liverseg`` does.

    python bench/bench_body_crop.py --threads 2 --isa avx2 --save
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_real_ct as R  # noqa: E402

SHIPPED = {"chaos": R.CHAOS, "lits": R.REAL / "lits_117crop_ct.nii.gz",
           "totalseg": R.REAL / "totalseg_example_ct.nii.gz", "totalseg_sm": R.REAL / "totalseg_example_sm_ct.nii.gz"}


def body_roi(volume, hu: float, margin_mm: float):
    """(LPS min, LPS max) of the voxels above ``hu`` plus ``margin_mm``, and the box's share of the CT;
    None when no voxel is above ``hu``."""
    import numpy as np

    from LiverCTSegmentationLib.engine.preprocess import voxel_box_corners
    from LiverCTSegmentationLib.engine.volume import nonzero_box

    box = nonzero_box(volume.array > hu)
    if box is None:
        return None
    lo = [box[2].start, box[1].start, box[0].start]
    hi = [box[2].stop - 1, box[1].stop - 1, box[0].stop - 1]
    pts = voxel_box_corners(volume, lo, hi)
    share = float(np.prod([s.stop - s.start for s in box])) / volume.array.size
    return (pts.min(0) - margin_mm, pts.max(0) + margin_mm), share


def compare(path: Path, bundle, threads: int, repeat: int, hu: float, margin_mm: float) -> list:
    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.engine.pipeline import SegmentOptions, segment

    vol = io.read_volume(path)
    found = body_roi(vol, hu, margin_mm)
    if found is None:
        return ["no voxel above the threshold", "", "", "", "", "", ""]
    roi, share = found
    last: dict = {}
    for _ in range(max(1, repeat)):
        for mode in ("pipeline", "body crop"):
            last[mode] = segment(vol, bundle, SegmentOptions(device="cpu", threads=threads, bf16=False,
                                                             roi_lps=roi if mode == "body crop" else None))
    a, b = last["pipeline"], last["body crop"]

    def coarse(res) -> float:
        return res.timings["coarse"] + res.timings["preprocess"]

    la, lb = a.labelmap.array, b.labelmap.array
    return [f"{share:.2f}", coarse(a), coarse(b), a.timings["total"], b.timings["total"],
            f"{C.dice(la > 0, lb > 0):.5f}", f"{C.dice(la == 2, lb == 2):.4f}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native")
    ap.add_argument("--hu", type=float, default=-500.0, help="body threshold (HU)")
    ap.add_argument("--margin-mm", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/liverct-bench/real")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    rc = R.rerun_with_isa(args, __file__, argv)
    if rc is not None:
        return rc
    if R.chaos_missing():
        return 0
    cases = {n: p for n, p in SHIPPED.items() if p.exists()}
    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.engine.bundle import ModelBundle
    from LiverCTSegmentationLib.engine.heap import keep_freed_memory

    keep_freed_memory()  # as the liverseg command does: each page faulted in once, not per stage
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cases.update({n: R.build_resampled(work, n) for n in R.RESAMPLED})
    bundle = ModelBundle.load(models.resolve_model(None))
    rows = [[name] + compare(p, bundle, args.threads, args.repeat, args.hu, args.margin_mm)
            for name, p in cases.items()]
    import torch

    text = "\n".join([
        f"## Coarse search cropped to the body (> {args.hu:g} HU + {args.margin_mm:g} mm) vs the whole CT "
        f"(isa {args.isa})", "",
        "command: `" + " ".join(["python bench/bench_body_crop.py", *argv]) + "`",
        f"machine: {C.machine_line(args.threads)}; torch capability {torch.backends.cpu.get_cpu_capability()}; "
        f"model {bundle.name} {bundle.version}", R.load_line(), "",
        C.table(rows, ["CT", "body box share", "coarse s (whole CT)", "coarse s (body crop)", "total s (whole CT)",
                       "total s (body crop)", "liver Dice crop vs whole", "tumour Dice crop vs whole"])])
    C.report(text, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
