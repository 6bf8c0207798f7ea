"""``evaluate``: run a bundle exactly as the module does and score it per case.

Each case is segmented with ``engine.pipeline.segment`` on its native grid
(the same full-volume code path as the Slicer module and ``liverseg``), the
ground truth is mapped with the task's label mapping, and
:mod:`liverct_training.metrics` scores every class. Outputs in ``--out``:

- ``eval.csv``: one row per case and class (Dice, IoU, HD95, HD, ASSD in mm,
  RVD, volumes, empty flags, lesion detection for tumour classes, seconds).
- ``metrics.json``: the same aggregated (what ``export --metrics`` embeds).
- ``summary.md``: mean/median/std per metric and class over cases whose truth
  is non-empty, global (pooled) Dice, pooled lesion detection, and the cases
  with an empty tumour truth reported separately (how many got a false
  positive prediction, and its volume).
- ``boxplot_<metric>.png`` per metric and ``overlays/<case>.png`` (the CLI's
  overlay of the prediction) + ``overlays/<case>_compare.png`` (truth dashed vs
  prediction solid, errors shaded, on the axial and coronal slices through the
  largest liver error).

Distances are NaN when exactly one of truth/prediction is empty (see
metrics.py); they are left out of means and counted in the summary.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .datasets import Case, load_case
from .labels import TASK_CLASSES, TASK_TUMOR_LABEL, check_task
from .metrics import GlobalDice, LesionTotals, case_metrics, describe

METRICS = ("dice", "iou", "hd95_mm", "hd_mm", "assd_mm", "rvd")
CSV_COLUMNS = ["case_id", "class", "dice", "iou", "hd95_mm", "hd_mm", "assd_mm", "rvd", "true_ml", "pred_ml",
               "true_empty", "pred_empty", "n_true_lesions", "n_pred_lesions", "true_lesions_detected",
               "pred_lesions_matched", "lesion_recall", "lesion_precision", "mean_lesion_dice", "seconds"]


def task_from_bundle(bundle: Any) -> str:
    desc = getattr(bundle, "description", {}) or {}
    task = (desc.get("training") or {}).get("task")
    if task:
        return check_task(task)
    labels = getattr(bundle, "labels", None) or desc.get("labels") or []
    names = {str(l.get("name", "")).lower() for l in labels}
    values = {int(l["value"]) for l in labels}
    if any("lung" in n for n in names):
        return "lung_tumor"
    return "liver_tumor" if 2 in values else "liver"


def _fmt(x: Any) -> Any:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else ("inf" if math.isinf(x) else f"{x:.6g}")
    return x


def _rows_for_case(case_id: str, m: Mapping[str, Mapping[str, Any]], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for cls, v in m.items():
        les = v.get("lesions") or {}
        rows.append({
            "case_id": case_id, "class": cls, "dice": v["dice"], "iou": v["iou"], "hd95_mm": v["hd95"],
            "hd_mm": v["hd"], "assd_mm": v["assd"], "rvd": v["rvd"], "true_ml": v["true_ml"],
            "pred_ml": v["pred_ml"], "true_empty": int(v["true_empty"]), "pred_empty": int(v["pred_empty"]),
            "n_true_lesions": les.get("n_true", ""), "n_pred_lesions": les.get("n_pred", ""),
            "true_lesions_detected": les.get("tp_true", ""), "pred_lesions_matched": les.get("tp_pred", ""),
            "lesion_recall": les.get("recall", ""), "lesion_precision": les.get("precision", ""),
            "mean_lesion_dice": les.get("mean_lesion_dice", ""), "seconds": seconds,
        })
    return rows


def summarise(rows: Sequence[Mapping[str, Any]], globals_: Mapping[str, GlobalDice],
              lesions: Mapping[str, LesionTotals]) -> dict[str, Any]:
    """Aggregate eval rows. Statistics per class use cases with non-empty truth;
    cases with empty truth are summarised separately."""
    out: dict[str, Any] = {"classes": {}}
    for cls in dict.fromkeys(r["class"] for r in rows):
        cr = [r for r in rows if r["class"] == cls]
        nonempty = [r for r in cr if not int(r["true_empty"])]
        empty = [r for r in cr if int(r["true_empty"])]
        entry: dict[str, Any] = {
            "n_cases": len(cr),
            "n_nonempty_truth": len(nonempty),
            **{m: describe(float(r[m]) for r in nonempty) for m in METRICS},
            "global_dice": globals_[cls].value if cls in globals_ else float("nan"),
            "empty_truth": {
                "n_cases": len(empty),
                "n_false_positive_cases": sum(1 for r in empty if not int(r["pred_empty"])),
                "false_positive_ml": [float(r["pred_ml"]) for r in empty],
            },
        }
        if cls in lesions:
            entry["lesion_detection"] = lesions[cls].summary()
        out["classes"][cls] = entry
    return out


def _num(x: Any, nd: int = 3) -> str:
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "n/a" if math.isnan(xf) else f"{xf:.{nd}f}"


def write_summary_md(path: Path, summary: Mapping[str, Any], header: Mapping[str, Any]) -> None:
    lines = [f"# Evaluation: {header.get('bundle', '')}", ""]
    for k, v in header.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Per-class statistics over cases with non-empty ground truth (NaN distances, which occur when "
              "exactly one of truth/prediction is empty, are excluded and counted as n_nan).", ""]
    for cls, e in summary["classes"].items():
        lines += [f"## {cls}", "", f"cases: {e['n_cases']} ({e['n_nonempty_truth']} with non-empty truth); "
                  f"**global Dice (pooled over cases): {_num(e['global_dice'], 4)}**", "",
                  "| metric | mean | median | std | min | max | n | n_nan |", "|---|---|---|---|---|---|---|---|"]
        for m in METRICS:
            d = e[m]
            lines.append(f"| {m} | {_num(d['mean'], 4)} | {_num(d['median'], 4)} | {_num(d['std'], 4)} | "
                         f"{_num(d['min'], 4)} | {_num(d['max'], 4)} | {d['n']} | {d['n_nan']} |")
        if "lesion_detection" in e:
            ld = e["lesion_detection"]
            lines += ["", "Lesion detection (pooled over cases; a predicted lesion matches a true one when they "
                      "overlap by at least one voxel; 26-connected components):", "",
                      f"- true lesions: {ld['n_true']}, detected: {ld['tp_true']} (recall {_num(ld['recall'])})",
                      f"- predicted lesions: {ld['n_pred']}, matching a true lesion: {ld['tp_pred']} "
                      f"(precision {_num(ld['precision'])})",
                      f"- mean per-lesion Dice: {_num(ld['mean_lesion_dice'])}"]
        et = e["empty_truth"]
        lines += ["", f"Cases with EMPTY {cls} truth (reported separately, not in the table): {et['n_cases']}; "
                  f"with a false-positive prediction: {et['n_false_positive_cases']}"
                  + (f"; false-positive volumes (mL): {', '.join(_num(v) for v in et['false_positive_ml'])}"
                     if et["n_cases"] else ""), ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_boxplots(out: Path, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    classes = list(dict.fromkeys(r["class"] for r in rows))
    paths = []
    for m in METRICS:
        data = []
        for c in classes:
            v = np.asarray([float(r[m]) for r in rows if r["class"] == c and not int(r["true_empty"])], float)
            data.append(v[np.isfinite(v)])
        fig = Figure(figsize=(1.8 + 1.4 * len(classes), 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(111)
        ax.boxplot([d if d.size else [np.nan] for d in data], showmeans=True)
        ax.set_xticks(range(1, len(classes) + 1))
        ax.set_xticklabels([f"{c}\n(n={d.size})" for c, d in zip(classes, data)])
        ax.set_title(m)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        p = out / f"boxplot_{m}.png"
        fig.savefig(p, dpi=90)
        paths.append(p)
    return paths


def error_slices(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """(axial k, coronal j) of an [S, P, L] pair where the liver disagrees most (false positive or
    negative voxels); where they agree everywhere, where the truth (else the prediction) is largest."""
    for score in (((truth > 0) != (pred > 0)), truth > 0, pred > 0):
        if score.any():
            return int(np.argmax(score.sum(axis=(1, 2)))), int(np.argmax(score.sum(axis=(0, 2))))
    return truth.shape[0] // 2, truth.shape[1] // 2


def class_title(case_id: str, m: Mapping[str, Mapping[str, Any]]) -> str:
    """``case: liver Dice 0.912, tumor absent`` (a class empty in truth and prediction has no Dice)."""
    parts = [f"{c} absent" if not v.get("sum_sizes", 1) else f"{c} Dice {v['dice']:.3f}" for c, v in m.items()]
    return f"{case_id}: " + ", ".join(parts)


def save_compare_png(ct, truth: np.ndarray, pred: np.ndarray, path: Path, title: str = "") -> Path:
    """Axial and coronal slices through the largest liver error, truth dashed and prediction solid,
    false-positive liver shaded red and false-negative blue; reoriented to LPS-canonical so it is
    shown radiologically for any input direction. The picture a model card shows as its worst case."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    ct_arr, sp = np.asarray(ct.array), (ct.spacing[0], ct.spacing[1], ct.spacing[2])
    try:  # radiological display whatever the input orientation (patient right on image left)
        from LiverCTSegmentationLib.batch.overlay import canonical_lps

        ct_arr, sp = canonical_lps(ct)
        truth, pred = canonical_lps(ct, truth)[0], canonical_lps(ct, pred)[0]
    except ImportError:
        pass
    k, j = error_slices(truth, pred)
    # (image, truth, prediction, row spacing, column spacing, caption); coronal with superior up
    views = [(ct_arr[k], truth[k], pred[k], sp[1], sp[0], f"axial k={k}"),
             (ct_arr[::-1, j], truth[::-1, j], pred[::-1, j], sp[2], sp[0], f"coronal j={j}")]
    shading = ListedColormap([(0, 0, 0, 0), (0.9, 0.1, 0.1, 0.45), (0.1, 0.4, 1.0, 0.45)])
    fig = Figure(figsize=(11, 5.8))
    FigureCanvasAgg(fig)
    colors = {1: "tab:orange", 2: "lime"}
    for n, (img, t, p, rs, cs, caption) in enumerate(views):
        ax = fig.add_subplot(1, 2, n + 1)
        ax.imshow(np.clip(np.asarray(img, dtype=np.float32), -160, 240), cmap="gray", aspect=rs / cs)
        err = np.where((p > 0) & (t == 0), 1, np.where((t > 0) & (p == 0), 2, 0))
        ax.imshow(err, cmap=shading, vmin=0, vmax=2, aspect=rs / cs, interpolation="nearest")
        for v in sorted(set(np.unique(t).tolist() + np.unique(p).tolist()) - {0}):
            c = colors.get(int(v), "cyan")
            if (t == v).any():
                ax.contour(t == v, levels=[0.5], colors=[c], linestyles="dashed", linewidths=1)
            if (p == v).any():
                ax.contour(p == v, levels=[0.5], colors=[c], linewidths=1)
        ax.set_title(f"{caption}: {int((err == 1).sum())} false-positive (red), "
                     f"{int((err == 2).sum())} false-negative (blue) liver voxels", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{title}  (truth dashed, prediction solid; slices through the largest liver error)", fontsize=9)
    fig.savefig(path, dpi=90)
    return path


def evaluate_cases(cases: Sequence[Case], bundle_dir: str | Path, out_dir: str | Path, task: str | None = None,
                   label_mapping: Mapping[Any, Any] | None = None, device: str = "auto", overlays: bool = True,
                   min_iou: float = 0.0, log=print) -> dict[str, Any]:
    """Segment and score ``cases``; writes the outputs listed in the module docstring."""
    from LiverCTSegmentationLib.engine import pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bundle = ModelBundle.load(bundle_dir)
    task = check_task(task or task_from_bundle(bundle))
    classes = TASK_CLASSES[task]
    lesion_classes = ("tumor",) if TASK_TUMOR_LABEL[task] is not None else ()
    save_overlay_png = None
    if overlays:
        (out / "overlays").mkdir(exist_ok=True)
        try:
            from LiverCTSegmentationLib.batch.overlay import save_overlay_png
        except ImportError:
            save_overlay_png = None
    rows: list[dict[str, Any]] = []
    globals_ = {c: GlobalDice() for c in classes}
    lesions = {c: LesionTotals() for c in lesion_classes}
    opts = pipeline.SegmentOptions(device=device)
    for i, case in enumerate(cases):
        if case.label_path is None:
            raise ValueError(f"case {case.case_id} has no label: it cannot be evaluated")
        ct, truth = load_case(case, task, label_mapping)
        known = max(v for vals in classes.values() for v in vals)
        if int(np.asarray(truth.array).max(initial=0)) > known:
            # A multi-organ reference: its neighbouring organs (values > ours) are background here.
            truth = truth.with_array(np.where(np.asarray(truth.array) > known, 0, truth.array).astype(np.uint8))
        t0 = time.perf_counter()
        res = pipeline.segment(ct, bundle, opts)
        seconds = time.perf_counter() - t0
        if not res.labelmap.same_grid(ct):
            raise RuntimeError(f"{case.case_id}: the pipeline's labelmap is not on the input grid")
        pred = np.asarray(res.labelmap.array)
        m = case_metrics(pred, np.asarray(truth.array), ct.spacing, classes, lesion_classes, min_iou=min_iou)
        for c, v in m.items():
            globals_[c].add(intersection=v["intersection"], sum_sizes=v["sum_sizes"])
            if c in lesions:
                lesions[c].add(v["lesions"])
        rows.extend(_rows_for_case(case.case_id, m, seconds))
        log(f"[{i + 1}/{len(cases)}] {case.case_id}: "
            + ", ".join(f"{c} Dice {v['dice']:.3f}" for c, v in m.items()) + f" ({seconds:.1f} s)")
        if overlays:
            title = class_title(case.case_id, m)
            if save_overlay_png is not None:
                try:
                    save_overlay_png(ct, res.labelmap, out / "overlays" / f"{case.case_id}.png", title=title,
                                     labels=bundle.labels, model=f"{bundle.name} {bundle.version}")
                except Exception as e:  # a picture must never lose the numbers
                    log(f"  overlay failed: {e}")
            save_compare_png(ct, np.asarray(truth.array), pred, out / "overlays" / f"{case.case_id}_compare.png", title)
    _write_csv(out / "eval.csv", rows)
    summary = summarise(rows, globals_, lesions)
    header = {"bundle": f"{bundle.name} {bundle.version}", "bundle_path": str(bundle_dir), "task": task,
              "cases": len(cases), "device": device,
              "lesion matching": "overlap >= 1 voxel" if min_iou <= 0 else f"IoU > {min_iou}"}
    result = {"header": header, **summary}
    tmp = out / f"metrics.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, out / "metrics.json")
    write_summary_md(out / "summary.md", summary, header)
    if rows:
        write_boxplots(out, rows)
    return result


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in CSV_COLUMNS})
    os.replace(tmp, path)


def main_evaluate(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="liverseg-train evaluate",
                                 description="Segment cases with a bundle (engine.pipeline.segment) and score them.")
    ap.add_argument("--bundle", required=True, help="model bundle folder")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", help="split JSON (from `split`/`train`)")
    src.add_argument("--cases", nargs="+", metavar="IMAGE:LABEL", help="explicit image:label pairs")
    ap.add_argument("--subset", default="test", choices=["test", "val", "train", "all"])
    ap.add_argument("--config", help="training config: re-read the dataset instead of the split's stored paths")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="a.b=c")
    ap.add_argument("--task", choices=sorted(TASK_CLASSES), help="default: from the bundle")
    ap.add_argument("--out", default="eval", help="output folder (default ./eval)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-overlays", action="store_true")
    ap.add_argument("--lesion-min-iou", type=float, default=0.0,
                    help="lesion match criterion: 0 = any overlap (default), e.g. 0.1 = IoU > 0.1")
    ap.add_argument("--limit", type=int, help="evaluate only the first N cases")
    a = ap.parse_args(argv)
    from LiverCTSegmentationLib.engine.errors import LiverSegError

    from .datasets import DatasetError, read_dataset, read_list
    from .split import SplitError, read_split, subset_cases

    label_mapping = None
    try:
        if a.cases:
            cases = read_list(a.cases)
        else:
            split = read_split(a.split)
            dataset = None
            if a.config:
                from .config import load_config

                cfg = load_config(a.config, a.overrides)
                label_mapping = cfg["data"].get("label_mapping")
                a.task = a.task or cfg["data"].get("task")
                dataset = read_dataset(cfg["data"])
            cases = subset_cases(split, a.subset, dataset)
        if a.limit:
            cases = cases[: a.limit]
        if not cases:
            print(f"error: no cases in subset {a.subset!r}")
            return 2
        result = evaluate_cases(cases, a.bundle, a.out, a.task, label_mapping, a.device, not a.no_overlays,
                                a.lesion_min_iou)
    except (DatasetError, SplitError, LiverSegError, ValueError) as e:
        print(f"error: {e}")
        return 2
    for cls, e in result["classes"].items():
        print(f"{cls}: mean Dice {_num(e['dice']['mean'], 4)}, global Dice {_num(e['global_dice'], 4)}")
    print(f"wrote {Path(a.out) / 'eval.csv'}, summary.md, metrics.json")
    return 0
