"""Would ONNX Runtime earn its place as a CPU backend? The pipeline's own windows through fast_unet and ORT.

Issue 15 lists "ONNX Runtime or OpenVINO as a CPU backend" among the options to measure
(``bench_openvino.py`` measures the other). This keeps every window fast_unet runs while the default
model segments a real CT (``bench_openvino.capture_windows``), exports each stage's torch module to ONNX
(``torch.onnx.export``, spatial dims dynamic) and times every window through fast_unet and through an
ONNX Runtime CPU session with the same thread count, in the same process. Shown per window: the minimum of
``--repeat`` runs, the largest logit difference and the arg-max agreement; one-off costs apart.

Both run at the host's native ISA: ONNX Runtime's MLAS picks its kernels from CPUID and has no switch
to stay on AVX2, so an AVX2-limited fast_unet against it would not compare like with like. The ISA
the run had is printed. ONNX Runtime is not a project dependency (``pip install onnxruntime onnx
onnxscript`` to run this); without it this prints SKIP.

    python bench/bench_onnxruntime.py --threads 2 --case chaos_150 --save
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import bench_openvino as O  # noqa: E402
import bench_real_ct as R  # noqa: E402


def export(net, folder: Path, stage: str) -> Path:
    """``net`` as an ONNX file whose three spatial dims are dynamic."""
    import torch

    path = folder / f"{stage}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 1, 32, 32, 32),), str(path), dynamo=True, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {2: "k", 3: "j", 4: "i"}})
    return path


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure(windows: list, threads: int, repeat: int, folder: Path) -> tuple[list, list]:
    import torch

    from LiverCTSegmentationLib.engine.fast_unet import fast_network

    torch.set_num_threads(threads)
    sessions, rows, once = {}, [], []
    for i, (stage, x, net) in enumerate(windows):
        if stage not in sessions:
            t0 = time.perf_counter()
            path = export(net, folder, stage)
            t_export = time.perf_counter() - t0
            t0 = time.perf_counter()
            sessions[stage] = session(path, threads)
            once.append(f"{stage}: export {t_export:.2f} s, session {time.perf_counter() - t0:.2f} s")
        fast, sess, feed = fast_network(net), sessions[stage], {"x": x.numpy()}
        with torch.inference_mode():
            fast(x)  # warm: oneDNN primitives for this shape
            t_fast, y_fast = O.best_of(lambda: fast(x), repeat)
        sess.run(None, feed)
        t_ort, y_ort = O.best_of(lambda: torch.from_numpy(sess.run(None, feed)[0]), repeat)
        rows.append([f"{i}: {stage} {'x'.join(map(str, x.shape[2:]))}", t_fast, t_ort, f"x{t_fast / t_ort:.2f}",
                     f"{(y_ort - y_fast).abs().max().item():.1e}",
                     f"{(y_ort.argmax(1) == y_fast.argmax(1)).float().mean().item():.6f}"])
    return rows, once


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--case", default="chaos_150", help="chaos, " + ", ".join(R.RESAMPLED))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/liverct-bench/real")
    ap.add_argument("--save", action="store_true", help="append the output to bench/RESULTS.md")
    args = ap.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch.onnx.export's exporter)
    except ImportError:
        print("SKIP: onnxruntime/onnxscript are not installed (pip install onnxruntime onnx onnxscript); "
              "they are not project dependencies.")
        return 0
    if R.chaos_missing():
        return 0
    import torch

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ct = R.case_ct(work, args.case)
    with tempfile.TemporaryDirectory() as tmp:
        rows, once = measure(O.capture_windows(ct, args.threads), args.threads, args.repeat, Path(tmp))
    text = "\n".join([
        f"## ONNX Runtime vs fast_unet on the pipeline's windows: {args.case} (native ISA)", "",
        "command: `" + " ".join(["python bench/bench_onnxruntime.py", *argv]) + "`",
        f"machine: {C.machine_line(args.threads)}; torch capability {torch.backends.cpu.get_cpu_capability()}; "
        f"onnxruntime {ort.__version__}; /proc/cpuinfo {R.cpu_flags()}", R.load_line(), "",
        C.table(rows, ["window", "fast_unet s", "onnxruntime s", "speed-up", "max |logit diff|",
                       "arg-max agreement"]),
        "", "One-off costs per process: " + "; ".join(once)])
    C.report(text, args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
