"""How the default model ``liverct`` was trained: CPU rounds of the ``anatomy_liver_tumor`` preset and
weight averages ("soups") of them.

No GPU was lent to the sessions that made it, so the recipe is a chain of short runs on a 2-core
machine, each round continuing every run's fine stage from an earlier step's exported bundle.
This module holds that chain as data (``ROUNDS``, ``START``, ``SOUPS``, ``ORDER``), so the model
card, the README and a rerun all read one source; ``python -m liverct_training.recipe_liverct
--run-dir runs/liverct --until <step>`` replays it up to a step (``VERSIONS`` names the step each
released version is), then evaluates leave-one-real-CT-out. Rounds 1-5 took ~110, 55, 52, 51 and 52
minutes on 2 cores, two runs at a time, plus the synthesis; rounds 6-9 took 37, 52, 43 and 38
(rounds 8 and 9 while other work shared the machine).

Each round trains four runs: three folds, each holding out one real CT (never seen, not even as a
synthesis source), and the final model on everything. Round 1 trains both stages (coarse
warm-started from the phantom demo, which never saw real CT); later rounds train only the fine stage
and keep round 1's coarse weights. A soup averages the fine weights of the same run over steps
(``soup.py``): fold with fold, final with final, so a fold still never meets its held-out CT.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

from . import loo
from .export import export_run
from .soup import soup

PRESET = "anatomy_liver_tumor"
RUNS = (("fold-chaos", "chaos"), ("fold-lits117", "lits117"), ("fold-totalseg", "totalseg"), ("final", None))
THORAX = "data.synthetic.thorax={prob: 0.75, cap_mm: [40, 90]}"
SHAPES = ("stages.fine.train.lesions.shapes=../shared/data/anatomy",)
CPU = ("train.batch_size=2", "train.patch_size=[64,96,96]", "train.iterations_per_epoch=50", "train.num_workers=0",
       "train.threads=1", "train.warmup_iterations=50", "output.mlflow=false", "data.prepare_jobs=1")
FINE_ONLY = ("train.stages=[fine]",)
# Rounds 4-7: the tumour settings that made the tumour class learn, on small or on large patches.
TUMOUR = ("stages.fine.train.class_weights=[1.0,1.0,3.0]", "stages.fine.train.tumor_oversample=0.5",
          "stages.fine.train.lesions.prob=0.7", THORAX)
SMALL = ("train.patch_size=[48,64,64]", "train.batch_size=4")

# round -> (what it adds, overrides). Later overrides win (the config's a.b=c semantics).
ROUNDS: dict[int, tuple[str, tuple[str, ...]]] = {
    1: ("both stages; coarse from the phantom demo's weights", CPU + (
        "stages.coarse.train.epochs=8", "stages.fine.train.epochs=16",
        "stages.coarse.train.init_weights=LiverCTSegmentation/Resources/Models/liverct-phantom-demo")),
    2: ("fine stage +600 iterations, real tumour shapes as lesions", CPU + FINE_ONLY + SHAPES + (
        "stages.fine.train.epochs=12", "stages.fine.train.lr=0.001")),
    3: ("thorax cap (a heart above the dome), tumour weight 4", CPU + FINE_ONLY + SHAPES + (
        "stages.fine.train.epochs=12", "stages.fine.train.lr=0.001", "stages.fine.train.class_weights=[1.0,1.0,4.0]",
        "stages.fine.train.tumor_oversample=0.5", THORAX)),
    4: ("small liver-centred patches: 3x the tumour-bearing updates", CPU + FINE_ONLY + SHAPES + SMALL + (
        "stages.fine.train.epochs=18", "stages.fine.train.lr=0.002") + TUMOUR),
    5: ("64x96x96 patches again: the context round 4 lost", CPU + FINE_ONLY + SHAPES + (
        "stages.fine.train.epochs=12", "stages.fine.train.lr=0.001") + TUMOUR),
    6: ("small patches again (lr 0.001, 600 iterations), from the round-4/5 soup", CPU + FINE_ONLY + SHAPES + SMALL + (
        "stages.fine.train.epochs=12", "stages.fine.train.lr=0.001") + TUMOUR),
    7: ("64x96x96 patches again, from the round-4/5/6 soup", CPU + FINE_ONLY + SHAPES + (
        "stages.fine.train.epochs=12", "stages.fine.train.lr=0.001") + TUMOUR),
    8: ("small patches again, from the round-4/5/6/7 soup", CPU + FINE_ONLY + SHAPES + SMALL + (
        "stages.fine.train.epochs=12", "stages.fine.train.lr=0.001") + TUMOUR),
    9: ("round 8 with another seed (1), from the same soup: the seed spread", CPU + FINE_ONLY + SHAPES + SMALL + (
        "stages.fine.train.epochs=12", "stages.fine.train.lr=0.001") + TUMOUR + ("train.seed=1",)),
}
#: round -> the step whose bundles it warm-starts from (default: the round before)
START: dict[int, str] = {6: "soup45", 7: "soup456", 8: "soup4567", 9: "soup4567"}
#: soup step -> the steps whose fine weights it averages (equal weights): each new round with the soup before it;
#: two seeds of one round are first averaged with each other (soup89), then with the soup before them
SOUPS: dict[str, tuple[str, ...]] = {"soup45": ("round4", "round5"), "soup456": ("soup45", "round6"),
                                     "soup4567": ("soup456", "round7"), "soup45678": ("soup4567", "round8"),
                                     "soup89": ("round8", "round9"), "soup4567_89": ("soup4567", "soup89")}
ORDER = ("round1", "round2", "round3", "round4", "round5", "soup45", "round6", "soup456", "round7", "soup4567", "round8",
         "soup45678", "round9", "soup89", "soup4567_89")
#: released version -> the step that is it
VERSIONS = {"1.0.0": "round5", "1.1.0": "soup4567", "1.2.0": "soup4567_89"}


def start_step(round_no: int) -> str:
    return START.get(round_no, f"round{round_no - 1}")


def _extra(round_no: int, name: str, run_dir: Path, cache: Path) -> list[str]:
    """What one run of one round adds to the round's overrides: the lesion-shape cache and the warm start."""
    out = []
    if any(o.startswith("stages.fine.train.lesions.shapes=") for o in ROUNDS[round_no][1]):
        out.append(f"stages.fine.train.lesions.shapes_cache={cache / 'shapes'}")
    if round_no > 1:
        out.append(f"stages.fine.train.init_weights={run_dir / start_step(round_no) / name / 'bundle'}")
    return out


def run_overrides(round_no: int, name: str, held_out: str | None, run_dir: Path, cache: Path) -> list[str]:
    """The ``liverseg-train train`` overrides of one run of one round (as ``loo`` passes them)."""
    own = run_dir / f"round{round_no}" / name
    return [*ROUNDS[round_no][1], *loo.run_overrides(own, cache, held_out), *_extra(round_no, name, run_dir, cache)]


def _export(own: Path, round1: Path) -> None:
    """The run's bundle (the next round's warm start); a fine-only run's summary first gets round 1's
    coarse entry, so that its card lists both stages."""
    if own != round1:
        s = json.loads((own / "train_summary.json").read_text())
        s["coarse"] = json.loads((round1 / "train_summary.json").read_text())["coarse"]
        (own / "train_summary.json").write_text(json.dumps(s, indent=1))
    export_run(own, own / "bundle", overwrite=True, hash_data=False)


def _train_round(r: int, run_dir: Path, cache: Path, jobs: int) -> bool:
    runs = [(name, run_dir / f"round{r}" / name, held) for name, held in RUNS]
    for name, own, _ in runs:
        own.mkdir(parents=True, exist_ok=True)
        if r > 1:  # the coarse stage stays round 1's
            for f in ("best_coarse.pt", "last_coarse.pt", "history_coarse.json"):
                shutil.copyfile(run_dir / "round1" / name / f, own / f)
    codes = loo.train_runs(PRESET, ROUNDS[r][1], runs, cache, jobs,
                           per_run={n: _extra(r, n, run_dir, cache) for n, _ in RUNS})
    if any(codes.values()):
        print(f"round {r}: runs failed {codes}; see their train.log", file=sys.stderr)
        return False
    for name, own, _ in runs:
        _export(own, run_dir / "round1" / name)
    return True


def steps_until(step: str) -> list[str]:
    if step not in ORDER:
        raise SystemExit(f"unknown step {step!r}: one of {', '.join(ORDER)} (or a version: {', '.join(VERSIONS)})")
    return list(ORDER[:ORDER.index(step) + 1])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/liverct"))
    ap.add_argument("--cache", type=Path, default=Path("runs/liverct-cache"))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--until", default=VERSIONS[max(VERSIONS)], help="last step (or version) to make; "
                    f"default the latest version, {max(VERSIONS)}")
    ap.add_argument("--from", dest="first", help="first step to make (the earlier ones exist in --run-dir)")
    ap.add_argument("--print", action="store_true", help="print the commands, train nothing")
    a = ap.parse_args(argv)
    run_dir, cache = a.run_dir.resolve(), a.cache.resolve()
    steps = steps_until(VERSIONS.get(a.until, a.until))
    if a.first:
        if a.first not in steps:
            raise SystemExit(f"--from {a.first}: not a step up to {steps[-1]} ({', '.join(steps)})")
        steps = steps[steps.index(a.first):]
    for step in steps:
        if step in SOUPS:
            srcs = [run_dir / s for s in SOUPS[step]]
            if a.print:
                print(f"{step}: liverseg-train soup {' '.join(map(str, srcs))} --out {run_dir / step} --stage fine")
                continue
            for made in soup(srcs, run_dir / step, "fine", overwrite=True):
                export_run(made, made / "bundle", overwrite=True, hash_data=False)
            continue
        r = int(step.removeprefix("round"))
        if a.print:
            for name, held in RUNS:
                print(f"round {r} {name}: liverseg-train train {PRESET} "
                      + " ".join(repr(o) if " " in o else o for o in run_overrides(r, name, held, run_dir, cache)))
        elif not _train_round(r, run_dir, cache, a.jobs):
            return 1
    if a.print:
        return 0
    return loo.main_loo([PRESET, "--run-dir", str(run_dir / steps[-1]), "--eval-only"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
