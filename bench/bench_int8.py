"""Would int8 weights earn their place on the CPU? The pipeline's own windows, float32 fast_unet vs int8.

Issue 15 lists "int8 or fp16 weights where accuracy holds" among the options to measure (fp16 has no
arithmetic on x86 CPUs without AVX-512 FP16, so only int8 is measured). This segments real CTs with the
default model, keeps every window the executor receives (``bench_openvino.capture_windows``), then
quantises each stage's torch module with torch's own static post-training quantisation (FX graph mode,
``--engine`` onednn by default: oneDNN honours the ``--isa avx2`` limit, so its int8 kernels are the
AVX2 ones), calibrated on the windows of *other* CTs (``--calibrate``, TotalSegmentator and LiTS by
default) and timed on the case's windows in the same process. Shown per window: the minimum of
``--repeat`` runs each way and the labels int8 gives against float32 (arg-max agreement, liver and
tumour Dice). The issue's bar for a change of backend is liver Dice >= 0.999 on real CTs.

    python bench/bench_int8.py --threads 2 --isa avx2 --case chaos_150 --save
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_openvino as O  # noqa: E402
import bench_real_ct as R  # noqa: E402

CALIBRATION = {"totalseg": R.REAL / "totalseg_example_ct.nii.gz", "lits": R.REAL / "lits_117crop_ct.nii.gz"}


def quantise(net, calibration: list, engine: str):
    """``net`` as an int8 module (static PTQ, per-channel weights for ``engine``), calibrated on ``calibration``."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():  # the FX API's deprecation notice (moved to torchao), once per call
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(net).eval(), get_default_qconfig_mapping(engine), (calibration[0],))
        with torch.inference_mode():
            for x in calibration:
                prepared(x)
        return convert_fx(prepared)


def label_agreement(fp32_logits, int8_logits) -> "tuple[float, float, float | None]":
    """(arg-max agreement, liver Dice (any organ class), tumour Dice (class 2; None with two classes)) of
    int8 against float32."""
    a, b = fp32_logits.argmax(1).numpy(), int8_logits.argmax(1).numpy()
    tumour = C.dice(a == 2, b == 2) if int(fp32_logits.shape[1]) > 2 else None
    return float((a == b).mean()), C.dice(a > 0, b > 0), tumour


def measure(windows: list, calibration: dict, threads: int, repeat: int, engine: str) -> list:
    import torch

    from LiverCTSegmentationLib.engine.fast_unet import fast_network

    torch.set_num_threads(threads)
    quantised, rows = {}, []
    for i, (stage, x, net) in enumerate(windows):
        if stage not in quantised:
            quantised[stage] = quantise(net, calibration[stage], engine)
        fast, q = fast_network(net), quantised[stage]
        with torch.inference_mode():
            fast(x), q(x)  # warm: primitives for this shape
            t_fast, y_fast = O.best_of(lambda: fast(x), repeat)
            t_q, y_q = O.best_of(lambda: q(x), repeat)
        agree, liver, tumour = label_agreement(y_fast, y_q)
        rows.append([f"{i}: {stage} {'x'.join(map(str, x.shape[2:]))}", t_fast, t_q, f"x{t_fast / t_q:.2f}",
                     f"{agree:.5f}", f"{liver:.4f}", "-" if tumour is None else f"{tumour:.4f}"])
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native")
    ap.add_argument("--case", default="chaos_150", help="chaos, " + ", ".join(R.RESAMPLED))
    ap.add_argument("--calibrate", default=",".join(CALIBRATION), help="CTs whose windows calibrate int8")
    ap.add_argument("--engine", default="onednn", help="torch.backends.quantized.engine (onednn honours --isa)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/liverct-bench/real")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    rc = R.rerun_with_isa(args, __file__, argv)
    if rc is not None:
        return rc
    cal_paths = [CALIBRATION.get(n, Path(n)) for n in args.calibrate.split(",") if n]
    missing = [p for p in [R.CHAOS, *cal_paths] if not p.exists()]
    if missing:
        print(f"SKIP: {', '.join(map(str, missing))} absent (the real CTs live in ../shared/data/real).")
        return 0
    import torch

    if args.engine not in torch.backends.quantized.supported_engines:
        print(f"SKIP: quantized engine {args.engine!r} not in this torch ({torch.backends.quantized.supported_engines}).")
        return 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ct = R.case_ct(work, args.case)
    calibration: dict = {}
    for path in cal_paths:
        for stage, x, _net in O.capture_windows(path, args.threads):
            calibration.setdefault(stage, []).append(x)
    rows = measure(O.capture_windows(ct, args.threads), calibration, args.threads, args.repeat, args.engine)
    text = "\n".join([
        f"## int8 (static PTQ, {args.engine}) vs float32 fast_unet on the pipeline's windows: {args.case} "
        f"(isa {args.isa})", "",
        "command: `" + " ".join(["python bench/bench_int8.py", *argv]) + "`",
        f"machine: {C.machine_line(args.threads)}; torch capability {torch.backends.cpu.get_cpu_capability()}; "
        f"env " + str(R.emulated_env()),
        f"calibrated on the windows of: {', '.join(p.name for p in cal_paths)}", R.load_line(), "",
        C.table(rows, ["window", "float32 s", "int8 s", "speed-up", "arg-max agreement", "liver Dice",
                       "tumour Dice"])])
    C.report(text, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
