"""``liverseg``: segment the liver and liver tumours in CT files from the command line.

    liverseg                          # demo: bundled sample CT -> ./liverseg-demo-output/
    liverseg ct1.nii.gz dicom_dir/ -o results/
    liverseg https://pacs/dicom-web/studies/1.2.3 --push   # DICOMweb study in, DICOM SEG back
    liverseg list-models | liverseg download-model NAME

Exit codes: 0 every case done (ok, skipped as already done, or done by a concurrent run),
1 some case failed or was not run (locked by another run, stopped after a full disk),
2 usage/setup error (bad option, no inputs found, model unusable, output folder
unwritable), 130 cancelled with Ctrl-C (completed cases are kept; rerun to resume).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

from .. import __version__
from ..engine.errors import Cancelled, LiverSegError
from ..resource_paths import resources_dir
from .results import STATUSES

SAMPLE_CT = resources_dir() / "Samples" / "phantom_ct.nii.gz"
DEMO_OUTDIR = "liverseg-demo-output"
DEFAULT_OUTDIR = "liverseg-output"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="liverseg",
        description="Segment the liver and liver tumours in abdominal CT volumes. "
        "Without inputs, runs the demo on the bundled sample CT. "
        "Research use only; review every result (see the model card: Resources/MODEL_CARD.md). "
        "Put '--' before inputs whose names start with '-'.",
        epilog="Other commands: 'liverseg list-models', 'liverseg download-model NAME'. "
        "Exit codes: 0 ok, 1 some case failed, 2 usage error, 130 cancelled.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="CT files (.nii, .nii.gz, .nrrd, .mha, .mhd), folders of them, DICOM series folders, or "
                        "DICOMweb study/series URLs (<root>/studies/<uid>[/series/<uid>]; credentials from "
                        "LIVERSEG_DICOMWEB_USER/_PASSWORD, LIVERSEG_DICOMWEB_TOKEN or ~/.netrc)")
    p.add_argument("-o", "--output", metavar="OUTDIR",
                   help=f"output folder (default ./{DEFAULT_OUTDIR}, or ./{DEMO_OUTDIR} for the demo)")
    p.add_argument("--model", metavar="NAME|PATH", help="model name, bundle folder or .zip (default: bundled model)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--fast", action="store_true", help="less window overlap: faster, slightly less accurate")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads for inference")
    p.add_argument("--format", choices=["nifti", "nrrd"], default="nifti", help="labelmap file format")
    p.add_argument("--no-seg-nrrd", action="store_true", help="do not write the Slicer .seg.nrrd")
    p.add_argument("--overlay", action=argparse.BooleanOptionalAction, default=True, help="write a PNG preview")
    p.add_argument("--dicom-seg", action=argparse.BooleanOptionalAction, default=True,
                   help="for DICOM inputs, write <case>_seg.dcm, a DICOM Segmentation referencing the series "
                        "(default; --no-dicom-seg to skip)")
    p.add_argument("--dicom-sr", action="store_true",
                   help="for DICOM inputs, also write <case>_sr.dcm, a TID 1500 measurement report on the SEG")
    p.add_argument("--push", action="store_true",
                   help="store the DICOM SEG (and SR) back in the study of each DICOMweb input (STOW-RS)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write <case>_liver_prob.nii.gz and <case>_tumor_prob.nii.gz (uint8, 0-255 = 0-1) "
                        "from the same pass")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write <case>_uncertainty.nii.gz and a confidence score (report.csv 'confidence': "
                        "review the lowest first); 4 more passes of the last stage")
    p.add_argument("--overwrite", action="store_true", help="recompute and replace existing results")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip cases whose results are complete and current (default)")
    p.add_argument("--lock-wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait at the end for cases another run on this host is processing "
                        "(then they are reported 'locked'; default 60)")
    p.add_argument("--report", metavar="CSV", default="report.csv",
                   help="CSV report; a bare file name is placed in OUTDIR (default report.csv)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="spread the cases over Ray workers: alone, a Ray instance on this machine; 'auto' or "
                        "ray://HOST:10001, an existing cluster (needs: pip install 'liverct-segmentation[cluster]')")
    p.add_argument("--ray-actors", type=int, metavar="N",
                   help="Ray workers (default: one per GPU, else the CPUs divided by --threads, 4 by default)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-case lines")
    p.add_argument("--json", action="store_true", help="print the per-case results and statistics as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    p.add_argument("--list-models", action="store_true", help="list available models and exit")
    p.add_argument("--version", action="version", version=f"liverseg {__version__}")
    return p


# --------------------------------------------------------------------- subcommands
def _list_models(as_json: bool = False) -> int:
    from .. import models

    try:
        infos = models.list_models()
    except LiverSegError as err:
        _err(str(err))
        return EXIT_USAGE
    rows = []
    for m in infos:
        d = m.to_dict() if hasattr(m, "to_dict") else (dict(vars(m)) if hasattr(m, "__dict__") else dict(m))
        rows.append({k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()})
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    default = None
    try:
        default = Path(models.default_bundle_dir()).name
    except Exception:  # noqa: BLE001 - listing must work even without a default
        pass
    if not rows:
        print("no models found")
    for d in rows:
        status = d.get("status") or ("bundled" if d.get("bundled") else ("installed" if d.get("installed") else
                                                                          "downloadable"))
        star = " (default)" if d.get("name") == default else ""
        print(f"{d.get('name', '?')}  {d.get('version', '') or ''}  [{status}]{star}")
        if d.get("description"):
            print(f"    {d['description']}")
    return EXIT_OK


def _download_model(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="liverseg download-model", description="Download and install a model.")
    p.add_argument("name")
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)
    from .. import models

    bar = _Bar(sys.stderr.isatty())
    try:
        path = models.download_model(a.name, progress=lambda f, s="download": bar(f, f"{a.name}: {s}"))
    except LiverSegError as err:
        bar.close()
        _err(str(err))
        return EXIT_FAILED
    except Exception as err:  # noqa: BLE001
        bar.close()
        _err(f"unexpected error ({type(err).__name__}: {err}); rerun with --debug for the traceback")
        if a.debug:
            traceback.print_exc()
        return EXIT_FAILED
    bar.close()
    print(f"installed {a.name} at {path}")
    return EXIT_OK


# ---------------------------------------------------------------------- progress
class _Bar:
    """tqdm bar on stderr driven by the batch progress callback (fraction, stage)."""

    def __init__(self, enabled: bool):
        self.bar = None
        self._last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=1000, file=sys.stderr, unit="‰", leave=False, dynamic_ncols=True,
                                bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")
            except ImportError:  # pragma: no cover
                self.bar = None

    def __call__(self, fraction: float, stage: str) -> None:
        if self.bar is None:
            return
        n = int(round(min(max(fraction, 0.0), 1.0) * 1000))
        if n > self.bar.n:
            self.bar.n = n
        self.bar.set_description_str(stage[:60], refresh=False)
        now = time.monotonic()
        if now - self._last >= 0.1:  # explicit, throttled redraw (stage names change often)
            self._last = now
            self.bar.refresh()

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary_line(r) -> str:  # r: CaseResult
    s = r.statistics or {}
    if not r.ok:
        return f"{r.case}: {r.status.upper()}" + (f" - {r.error}" if r.error else "")
    stats = ""
    if s:
        n = int(s.get("tumor_count", 0) or 0)
        stats = (f"liver {float(s.get('liver_ml', 0)):.1f} mL, {n} tumour{'s' if n != 1 else ''} "
                 f"{float(s.get('tumor_ml', 0) or 0):.1f} mL ({float(s.get('burden_percent', 0) or 0):.1f}%)")
        if s.get("confidence") is not None:
            stats += f", confidence {float(s['confidence']):.2f}"
    tag = {"skipped": "skipped (already done)", "done-by-other-run": "done by a concurrent run"}.get(
        r.status, f"ok in {r.seconds_total:.1f} s")
    return f"{r.case}: {tag}" + (f" - {stats}" if stats else "")


# --------------------------------------------------------------------------- main
def _option_that_is_a_file(argv: Sequence[str]) -> Optional[str]:
    """The first argument before '--' that starts with '-' yet names an existing path:
    argparse would take ``-o.nii.gz`` as ``-o .nii.gz`` and run the demo instead of the file."""
    for tok in argv:
        if tok == "--":
            return None
        if tok.startswith("-") and tok != "-" and os.path.lexists(tok):
            return tok
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; returns the exit code (see the module docstring)."""
    if argv is None:  # a process of its own (the console script, python -m): keep freed memory for reuse
        from ..engine.heap import keep_freed_memory

        keep_freed_memory()
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C outside the batch (e.g. while loading the model)
        _err("cancelled.")
        return EXIT_CANCELLED


def _main(argv: list) -> int:
    if argv and argv[0] == "list-models":
        return _list_models(as_json="--json" in argv[1:])
    if argv and argv[0] == "download-model":
        return _download_model(argv[1:])

    clash = _option_that_is_a_file(argv)
    if clash:
        _err(f"'{clash}' is the name of an existing file, but it starts with '-' and would be read as an "
             f"option. To segment it, put '--' before it (liverseg -o OUTDIR -- {clash}) or write ./{clash}.")
        return EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help/--version, 2 for usage errors
        return int(e.code or 0)
    if args.list_models:
        return _list_models(as_json=args.json)
    if args.threads is not None and args.threads < 1:
        _err("--threads must be at least 1")
        return EXIT_USAGE

    from .ray_cluster import check_ray_args

    usage = check_ray_args(args)  # '--ray ct.nii.gz' gives the file back to the inputs
    if usage:
        _err(usage)
        return EXIT_USAGE

    if args.dicom_sr and not args.dicom_seg:
        _err("--dicom-sr needs the DICOM SEG it reports on; drop --no-dicom-seg.")
        return EXIT_USAGE
    from .dicomweb import is_dicomweb_url

    if args.push and not any(is_dicomweb_url(i) for i in args.inputs):
        _err("--push stores results in a PACS: give a DICOMweb study or series URL as input.")
        return EXIT_USAGE
    if args.push and not args.dicom_seg:
        _err("--push stores the DICOM SEG; drop --no-dicom-seg.")
        return EXIT_USAGE

    demo = not args.inputs
    if demo:
        if not SAMPLE_CT.is_file():
            _err(f"the bundled sample CT is missing ({SAMPLE_CT}). Reinstall, or give input files.")
            return EXIT_USAGE
        inputs = [SAMPLE_CT]
        outdir = Path(args.output or DEMO_OUTDIR)
    else:
        inputs = [i if is_dicomweb_url(i) else Path(i) for i in args.inputs]  # Path() would mangle "//"
        outdir = Path(args.output or DEFAULT_OUTDIR)

    from . import run
    from ..engine.bundle import ModelBundle

    try:
        from .. import models

        model_dir = models.resolve_model_arg(args.model)  # folder, .zip or name; names an ambiguity
        bundle = ModelBundle.load(Path(model_dir))
    except LiverSegError as err:
        _err(f"model: {err}")
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001
        _err(f"model: unexpected error ({type(err).__name__}: {err}); rerun with --debug for the traceback")
        if args.debug:
            traceback.print_exc()
        return EXIT_USAGE

    if args.threads:
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:  # pragma: no cover
            pass

    options = run.BatchOptions(
        device=args.device, fast=args.fast, threads=args.threads, label_format=args.format,
        write_seg_nrrd=not args.no_seg_nrrd, overlay=args.overlay, report_name=args.report,
        lock_wait=max(args.lock_wait, 0.0), dicom_seg=args.dicom_seg, dicom_sr=args.dicom_sr, push=args.push,
        probabilities=args.probabilities, uncertainty=args.uncertainty,
    )
    show_progress = not args.quiet and sys.stderr.isatty()
    bar = _Bar(show_progress)
    cancel = threading.Event()

    def on_case_done(r) -> None:
        if r.status in ("locked", "not-run"):
            bar.write(f"{r.case}: {r.status}: {r.error}")
        elif r.status == "failed":
            if r.error_kind == "internal":
                bar.write(f"error: {r.case}: {r.error}; rerun with --debug for the traceback")
                if args.debug and r.traceback:
                    bar.write(r.traceback.rstrip())
            else:
                bar.write(f"error: {r.case}: {r.error}")
        elif not args.quiet:
            bar.write(_summary_line(r))
            for w in r.warnings if r.status == "ok" else ():  # a skipped case's were shown when it ran
                bar.write(f"  warning: {w}")

    if getattr(bundle, "demo", False) and not args.quiet:
        print(f"note: model '{bundle.name}' is a demo trained on synthetic phantoms; not for real patients.",
              file=sys.stderr)
    try:
        runner, extra = run.run_batch, {}
        if args.ray is not None:
            from .ray_run import run_batch_ray

            runner, extra = run_batch_ray, {"address": args.ray, "actors": args.ray_actors}
        results = runner(inputs, outdir, options, bundle, progress=bar, resume=args.resume,
                         overwrite=args.overwrite, cancel_event=cancel, on_case_done=on_case_done, **extra)
    except KeyboardInterrupt:
        cancel.set()
        bar.close()
        _err("cancelled. Completed cases are kept; rerun the same command to resume.")
        return EXIT_CANCELLED
    except Cancelled as err:
        bar.close()
        _err(str(err))
        return EXIT_CANCELLED
    except LiverSegError as err:
        bar.close()
        _err(str(err))
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001
        bar.close()
        _err(f"unexpected error ({type(err).__name__}: {err}); rerun with --debug for the traceback")
        if args.debug:
            traceback.print_exc()
        return EXIT_FAILED
    bar.close()

    n_failed = sum(not r.ok for r in results)
    report = run.report_path(outdir.absolute(), options)
    if args.json:
        print(json.dumps([{k: v for k, v in r.to_dict().items() if k != "traceback"} for r in results],
                         indent=2, ensure_ascii=False))
    elif not args.quiet:
        counts = {st: sum(r.status == st for r in results) for st in STATUSES}
        shown = ", ".join(f"{n} {st}" for st, n in counts.items() if n or st in ("ok", "skipped", "failed"))
        print(f"{shown}. Report: {report}")
        if demo and results and results[0].ok:
            r = results[0]
            folder = outdir.absolute() / r.case
            print(f"Demo results in {folder}")
            if r.outputs.get("overlay"):
                print(f"Overlay picture: {outdir.absolute() / r.outputs['overlay']}")
            if r.outputs.get("seg"):
                print(f"Open {outdir.absolute() / r.outputs['seg']} in 3D Slicer to edit the segments.")
    return EXIT_FAILED if n_failed else EXIT_OK


if __name__ == "__main__":  # python -m LiverCTSegmentationLib.batch.cli
    sys.exit(main())
