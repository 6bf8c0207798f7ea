"""Would OpenVINO earn its place as a CPU backend? The pipeline's own windows through fast_unet and OpenVINO.

Issue 15 lists "ONNX Runtime or OpenVINO as a CPU backend" among the options to measure. This runs the
default model on a real CT once with fast_unet (the executor the CPU path uses today), keeps every window
the executor receives (coarse and fine, their real shapes and contents), then times each window in the
same process through fast_unet and through an OpenVINO model converted from the same torch module
(``openvino.convert_model``, spatial dims dynamic, float32 inference, the same thread count). Shown per
window: the minimum of ``--repeat`` runs, the largest logit difference, the arg-max agreement, and the
kernels OpenVINO chose (``brgconv_avx2_*`` when the AVX2 limit took). One-off costs (conversion, compile)
are shown apart: a backend would pay them once per process, or ship/cache the converted model.

OpenVINO is not a dependency of the project (``pip install openvino`` to run this); without it this
prints SKIP. ``--isa avx2`` sets the same environment as bench_real_ct.py (oneDNN ISA limit, which
OpenVINO's oneDNN fork also reads) and re-runs itself so it acts from the start:

    python bench/bench_openvino.py --threads 2 --isa avx2 --case chaos_150 --save
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_real_ct as R  # noqa: E402


def capture_windows(ct: Path, threads: int) -> list:
    """(stage, window tensor, the stage's torch module) for every window fast_unet runs while the
    default model segments ``ct``."""
    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.engine import fast_unet, io, pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    bundle = ModelBundle.load(models.resolve_model(None))
    nets = {id(fast_unet.fast_network(bundle.network(s, "cpu"))): s for s in bundle.stage_names}
    seen, call = [], fast_unet.FastUNet.__call__

    def keep(self, x):  # the bench's own wrapper: records, then runs the executor unchanged
        seen.append((nets.get(id(self), "?"), x.detach().clone()))
        return call(self, x)

    fast_unet.FastUNet.__call__ = keep
    try:
        pipeline.segment(io.read_volume(ct), bundle, pipeline.SegmentOptions(device="cpu", threads=threads,
                                                                              bf16=False))
    finally:
        fast_unet.FastUNet.__call__ = call
    return [(s, x, bundle.network(s, "cpu").float().eval()) for s, x in seen]


def best_of(fn, n: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(max(1, n)):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def measure(windows: list, threads: int, repeat: int) -> tuple[list, list]:
    import openvino as ov
    import torch

    from LiverCTSegmentationLib.engine.fast_unet import fast_network

    torch.set_num_threads(threads)
    core, compiled, rows, once = ov.Core(), {}, [], []
    for i, (stage, x, net) in enumerate(windows):
        fast = fast_network(net)
        fast(x)  # warm: oneDNN primitives for this shape
        t_fast, y_fast = best_of(lambda: fast(x), repeat)
        if stage not in compiled:
            t0 = time.perf_counter()
            model = ov.convert_model(net, example_input=torch.zeros(tuple(x.shape)))  # not an inference tensor
            t_conv = time.perf_counter() - t0
            model.reshape({model.inputs[0]: ov.PartialShape([1, 1, -1, -1, -1])})
            t0 = time.perf_counter()
            cm = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                                                   "PERFORMANCE_HINT": "LATENCY"})
            t_comp = time.perf_counter() - t0
            kinds = Counter(op.get_rt_info()["primitiveType"].astype(str) for op in cm.get_runtime_model().get_ordered_ops()
                            if "primitiveType" in op.get_rt_info())
            convs = ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items()) if "conv" in k)
            compiled[stage] = cm.create_infer_request()
            once.append(f"{stage}: convert_model {t_conv:.2f} s, compile {t_comp:.2f} s; conv kernels: {convs}")
        req = compiled[stage]

        def run_ov():
            req.infer({0: x.numpy()})
            return torch.from_numpy(req.get_output_tensor(0).data.copy())

        run_ov()
        t_ov, y_ov = best_of(run_ov, repeat)
        rows.append([f"{i}: {stage} {'x'.join(map(str, x.shape[2:]))}", t_fast, t_ov, f"x{t_fast / t_ov:.2f}",
                     f"{(y_ov - y_fast).abs().max().item():.1e}",
                     f"{(y_ov.argmax(1) == y_fast.argmax(1)).float().mean().item():.6f}"])
    return rows, once


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native")
    ap.add_argument("--case", default="chaos_150", help="chaos, " + ", ".join(R.RESAMPLED))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/liverct-bench/real")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    rc = R.rerun_with_isa(args, __file__, argv)
    if rc is not None:
        return rc
    try:
        import openvino  # noqa: F401
    except ImportError:
        print("SKIP: openvino is not installed (pip install openvino); it is not a project dependency.")
        return 0
    if R.chaos_missing():
        return 0
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ct = R.case_ct(work, args.case)
    import openvino as ov
    import torch

    rows, once = measure(capture_windows(ct, args.threads), args.threads, args.repeat)
    text = "\n".join([
        f"## OpenVINO vs fast_unet on the pipeline's windows: {args.case} (isa {args.isa})", "",
        "command: `" + " ".join(["python bench/bench_openvino.py", *argv]) + "`",
        f"machine: {C.machine_line(args.threads)}; torch capability {torch.backends.cpu.get_cpu_capability()}; "
        f"openvino {ov.__version__}; env " + str(R.emulated_env()),
        R.load_line(), "",
        C.table(rows, ["window", "fast_unet s", "openvino s", "speed-up", "max |logit diff|", "arg-max agreement"]),
        "", "One-off costs per process: " + "; ".join(once)])
    C.report(text, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
