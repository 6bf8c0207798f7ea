"""``liverseg-train loo``: leave-one-case-out training and evaluation, plus the final all-case model.

Why: with a handful of labelled real CTs, the only honest estimate of how a
model does on an unseen patient is to hold each case out in turn, train on
the others, and segment the held-out case at native resolution with the
engine's full pipeline. This command does exactly that for every case of a
config's dataset (one run folder per fold, a shared preprocessing cache),
then trains ``final`` on all cases, exports it and writes the per-fold
numbers into its model card.

Run folders: ``<run_dir>/fold-<case>/`` and ``<run_dir>/final/``, each a normal
``liverseg-train train`` run (config.yaml, split.json, checkpoints, plots).
``<run_dir>/loo/``: one evaluation folder per fold, ``loo.json`` and
``loo_summary.md``. ``--jobs N`` trains N runs at once (useful on one large
GPU); ``--train-only`` / ``--eval-only`` split the work between machines.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .config import load_config


def fold_names(cfg: dict) -> list[str]:
    """Case ids of the config's dataset: one fold each."""
    from .datasets import read_dataset

    return [c.case_id for c in read_dataset(cfg["data"])]


def run_overrides(run_dir: Path, cache_dir: Path, held_out: str | None) -> list[str]:
    """Overrides turning the base config into one fold (``held_out``) or the final run (None)."""
    test = f"[{held_out}]" if held_out else "[]"
    return [f"output.run_dir={run_dir}", f"data.cache_dir={cache_dir}", f"data.split.test={test}",
            "data.split.val=[]", f"data.split_file={run_dir / 'split.json'}"]


def plan_runs(cfg: dict, root: Path, only: Sequence[str] | None = None,
              with_final: bool = True) -> list[tuple[str, Path, str | None]]:
    """(name, run folder, held-out case or None) for every fold and the final run."""
    names = fold_names(cfg)
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise SystemExit(f"liverseg-train loo: unknown case(s) {unknown}; the dataset has {names}")
    runs = [(f"fold-{n}", root / f"fold-{n}", n) for n in names if not only or n in only]
    if with_final:
        runs.append(("final", root / "final", None))
    return runs


def train_runs(config: str, overrides: Sequence[str], runs: Sequence[tuple[str, Path, str | None]],
               cache_dir: Path, jobs: int = 1, resume: bool = False, log=print,
               per_run: Mapping[str, Sequence[str]] | None = None) -> dict[str, int]:
    """Train every run as its own ``liverseg-train train`` process, ``jobs`` at a time; exit codes.

    ``per_run``: extra overrides by run name (e.g. each run's own warm-start weights)."""
    pending, active, codes = list(runs), {}, {}
    while pending or active:
        while pending and len(active) < max(1, jobs):
            name, run_dir, held = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "liverct_training.cli", "train", config, *overrides,
                   *run_overrides(run_dir, cache_dir, held), *(per_run or {}).get(name, ())]
            cmd += ["--resume"] if resume else []
            (run_dir / "command.txt").write_text(" ".join(cmd[2:]) + "\n", encoding="utf-8")
            logf = open(run_dir / "train.log", "a", encoding="utf-8")
            active[name] = (subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT), logf, time.time())
            log(f"[loo] started {name} (held out: {held or 'none'}) -> {run_dir / 'train.log'}")
        time.sleep(2.0)
        for name in list(active):
            proc, logf, t0 = active[name]
            if proc.poll() is not None:
                logf.close()
                codes[name] = proc.returncode
                log(f"[loo] {name} finished with exit code {proc.returncode} after {time.time() - t0:.0f} s")
                del active[name]
    return codes


def evaluate_folds(cfg: dict, runs: Sequence[tuple[str, Path, str | None]], root: Path, device: str = "auto",
                   log=print) -> dict[str, Any]:
    """Export each fold's bundle and evaluate it on its held-out case; returns {case: metrics.json}.

    The held-out case is read from this machine's copy of the dataset (``cfg``), so folds
    trained elsewhere (e.g. on a GPU box) are evaluated here.
    """
    from .datasets import read_dataset
    from .evaluate import evaluate_cases
    from .export import export_run
    from .split import read_split

    by_id = {c.case_id: c for c in read_dataset(cfg["data"])}
    results: dict[str, Any] = {}
    for name, run_dir, held in runs:
        if held is None:
            continue
        if read_split(run_dir / "split.json")["test"] != [held]:
            raise SystemExit(f"liverseg-train loo: {run_dir / 'split.json'} does not hold out {held!r}")
        bundle = export_run(run_dir, run_dir / "bundle", overwrite=True, hash_data=False)
        results[held] = evaluate_cases([by_id[held]], bundle, root / "loo" / held, task=cfg["data"]["task"],
                                       device=device, log=log)
    return results


def _row(case: str, m: dict) -> dict[str, Any]:
    cl = m.get("classes") or {}
    liver, tumor = cl.get("liver") or {}, cl.get("tumor") or {}

    def mean(e: dict, key: str) -> Any:
        v = (e.get(key) or {}).get("mean") if isinstance(e.get(key), dict) else None
        return None if v is None or v != v else round(float(v), 4)

    row = {"case": case, "liver_dice": mean(liver, "dice"), "liver_hd95_mm": mean(liver, "hd95_mm"),
           "liver_rvd": mean(liver, "rvd")}
    ld = tumor.get("lesion_detection") or {}
    if tumor.get("n_nonempty_truth"):
        row.update(tumor_dice=mean(tumor, "dice"), lesion_recall=ld.get("recall"),
                   lesion_precision=ld.get("precision"), true_lesions=ld.get("n_true"))
    if tumor:
        # False tumours matter as much as missed ones: count predicted lesions matching no true one.
        row["predicted_lesions"] = ld.get("n_pred")
        row["false_lesions"] = (ld.get("n_pred") or 0) - (ld.get("tp_pred") or 0)
        fp_ml = (tumor.get("empty_truth") or {}).get("false_positive_ml") or []
        if fp_ml:
            row["false_tumour_ml"] = round(float(sum(fp_ml)), 2)
    return row


def write_summary(results: dict[str, Any], root: Path) -> Path:
    """``loo.json`` (per-fold headline numbers) and ``loo_summary.md`` under ``root/loo``."""
    rows = [_row(case, m) for case, m in sorted(results.items())]
    out = root / "loo"
    out.mkdir(parents=True, exist_ok=True)
    (out / "loo.json").write_text(json.dumps({"folds": rows}, indent=1) + "\n", encoding="utf-8")

    def f(x: Any, pct: bool = False) -> str:
        if x is None:
            return "n/a"
        return f"{100 * x:+.1f}%" if pct else f"{x:.3f}"
    lines = ["| held-out case | liver Dice | liver HD95 (mm) | liver volume error | tumour Dice | lesions found | false lesions |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lesions = (f"{r['lesion_recall'] * r['true_lesions']:.0f}/{r['true_lesions']}"
                   if r.get("true_lesions") else "no tumour in truth")
        false = "n/a" if r.get("false_lesions") is None else str(r["false_lesions"])
        if r.get("false_tumour_ml"):
            false += f" ({r['false_tumour_ml']:.1f} mL)"
        lines.append(f"| {r['case']} | {f(r['liver_dice'])} | {f(r['liver_hd95_mm'])} | {f(r['liver_rvd'], True)} | "
                     f"{f(r.get('tumor_dice'))} | {lesions} | {false} |")
    worst = worst_case_picture(rows, out)
    if worst is not None:
        lines += ["", f"Worst held-out case: {worst[0]} (liver Dice {f(worst[1])}); `{worst[2].name}` shows the axial "
                  "and coronal slices through its largest liver error (false-positive liver red, false-negative blue)."]
    (out / "loo_summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "loo_summary.md"


def worst_case_picture(rows: Sequence[dict], out: Path) -> tuple[str, float, Path] | None:
    """Copy the compare picture of the fold with the lowest liver Dice to ``out/worst_case.png``
    (the card's known-failure picture); (case, Dice, path), or None without pictures."""
    scored = [r for r in rows if r.get("liver_dice") is not None]
    if not scored:
        return None
    r = min(scored, key=lambda r: r["liver_dice"])
    src = out / r["case"] / "overlays" / f"{r['case']}_compare.png"
    if not src.is_file():
        return None
    dst = out / "worst_case.png"
    shutil.copyfile(src, dst)
    return r["case"], float(r["liver_dice"]), dst


def main_loo(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="liverseg-train loo", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="preset name or YAML (e.g. real_liver_tumor)")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides for every run")
    ap.add_argument("--run-dir", help="root folder of the runs (default: the config's output.run_dir)")
    ap.add_argument("--cases", help="comma-separated subset of folds (default: every case)")
    ap.add_argument("--no-final", action="store_true", help="skip the all-case final run")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once (default 1)")
    ap.add_argument("--resume", action="store_true", help="continue interrupted runs")
    step = ap.add_mutually_exclusive_group()
    step.add_argument("--train-only", action="store_true", help="train, do not export/evaluate")
    step.add_argument("--eval-only", action="store_true", help="export/evaluate runs trained earlier")
    ap.add_argument("--device", default="auto", help="evaluation device")
    a = ap.parse_intermixed_args(argv)
    cfg = load_config(a.config, a.overrides)
    root = Path(a.run_dir or cfg["output"]["run_dir"]).resolve()
    cache_dir = Path(cfg["data"].get("cache_dir") or root / "cache").resolve()
    runs = plan_runs(cfg, root, a.cases.split(",") if a.cases else None, with_final=not a.no_final)
    if not a.eval_only:
        if cfg["data"].get("synthetic"):  # drawn once here, not by every run at once
            from .anatomy_data import synthetic_cases

            synthetic_cases(cfg["data"]["synthetic"], cache_dir, int(cfg["train"]["seed"]),
                            cfg["data"].get("prepare_jobs", 1))
        codes = train_runs(a.config, a.overrides, runs, cache_dir, a.jobs, a.resume)
        failed = {k: v for k, v in codes.items() if v}
        if failed:
            print(f"liverseg-train loo: runs failed {failed}; see their train.log", file=sys.stderr)
            return 1
    if a.train_only:
        return 0
    results = evaluate_folds(cfg, runs, root, a.device)
    summary = write_summary(results, root)
    print(summary.read_text(encoding="utf-8"))
    final = [r for r in runs if r[2] is None]
    if final:
        bundle = final[0][1] / "bundle"
        from .export import export_run

        # The final model's card carries the honest estimate: the leave-one-out table and worst case.
        extra = "## Leave-one-real-case-out (the honest estimate of this recipe)\n\n" + summary.read_text(encoding="utf-8")
        export_run(final[0][1], bundle, overwrite=True, card_extra=extra)
        if (summary.parent / "worst_case.png").is_file():
            shutil.copyfile(summary.parent / "worst_case.png", bundle / "worst_case.png")
        print(f"final bundle: {bundle} (leave-one-out results: {summary})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_loo())
