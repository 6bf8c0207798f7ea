"""How the default model ``liverct`` 1.0 was trained: five CPU rounds of the ``anatomy_liver_tumor`` preset.

No GPU was lent to the sessions that made it, so the recipe is a chain of short runs on a 2-core
machine, each round continuing every run's fine stage from the previous round's exported bundle.
This module holds that chain as data (``ROUNDS``), so the model card, the README and a rerun
all read one source; ``python -m liverct_training.recipe_liverct_1_0 --run-dir runs/liverct-1.0``
replays it (~4.5 h on 2 cores, two runs at a time), then evaluates leave-one-real-CT-out.

Each round trains four runs: three folds, each holding out one real CT (never seen, not even as a
synthesis source), and the final model on everything. Round 1 trains both stages (coarse
warm-started from the phantom demo, which never saw real CT); rounds 2-5 train only the fine stage
and keep round 1's coarse weights.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

PRESET = "anatomy_liver_tumor"
RUNS = (("fold-chaos", "chaos"), ("fold-lits117", "lits117"), ("fold-totalseg", "totalseg"), ("final", None))
THORAX = "data.synthetic.thorax={prob: 0.75, cap_mm: [40, 90]}"
SHAPES = ("stages.fine.train.lesions.shapes=../shared/data/anatomy",)
CPU = ("train.batch_size=2", "train.patch_size=[64,96,96]", "train.iterations_per_epoch=50", "train.num_workers=0",
       "train.threads=1", "train.warmup_iterations=50", "output.mlflow=false", "data.prepare_jobs=1")
FINE_ONLY = ("train.stages=[fine]",)

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
    4: ("small liver-centred patches: 3x the tumour-bearing updates", CPU + FINE_ONLY + SHAPES + (
        "train.patch_size=[48,64,64]", "train.batch_size=4", "stages.fine.train.epochs=18",
        "stages.fine.train.lr=0.002", "stages.fine.train.class_weights=[1.0,1.0,3.0]",
        "stages.fine.train.tumor_oversample=0.5", "stages.fine.train.lesions.prob=0.7", THORAX)),
    5: ("64x96x96 patches again: the context round 4 lost", CPU + FINE_ONLY + SHAPES + (
        "stages.fine.train.epochs=12", "stages.fine.train.lr=0.001", "stages.fine.train.class_weights=[1.0,1.0,3.0]",
        "stages.fine.train.tumor_oversample=0.5", "stages.fine.train.lesions.prob=0.7", THORAX)),
}


def run_overrides(round_no: int, name: str, held_out: str | None, run_dir: Path, cache: Path) -> list[str]:
    """The ``liverseg-train train`` overrides of one run of one round."""
    own = run_dir / f"round{round_no}" / name
    extra = [f"output.run_dir={own}", f"data.cache_dir={cache}", f"data.split.test=[{held_out or ''}]",
             "data.split.val=[]", f"data.split_file={own / 'split.json'}"]
    if any(o.startswith("stages.fine.train.lesions.shapes=") for o in ROUNDS[round_no][1]):
        extra.append(f"stages.fine.train.lesions.shapes_cache={cache / 'shapes'}")
    if round_no > 1:
        extra.append(f"stages.fine.train.init_weights={run_dir / f'round{round_no - 1}' / name / 'bundle'}")
    return list(ROUNDS[round_no][1]) + extra


def _train(round_no: int, name: str, held_out: str | None, run_dir: Path, cache: Path) -> subprocess.Popen:
    own = run_dir / f"round{round_no}" / name
    own.mkdir(parents=True, exist_ok=True)
    if round_no > 1:  # the coarse stage stays round 1's
        for f in ("best_coarse.pt", "last_coarse.pt", "history_coarse.json"):
            shutil.copyfile(run_dir / "round1" / name / f, own / f)
    cmd = [sys.executable, "-m", "liverct_training.cli", "train", PRESET,
           *run_overrides(round_no, name, held_out, run_dir, cache)]
    (own / "command.txt").write_text(" ".join(cmd[3:]) + "\n")
    return subprocess.Popen(cmd, stdout=(own / "train.log").open("w"), stderr=subprocess.STDOUT)


def _export(own: Path, round1: Path) -> None:
    import json

    if own != round1:  # a fine-only run's summary gets round 1's coarse entry, so its card lists both stages
        s = json.loads((own / "train_summary.json").read_text())
        s["coarse"] = json.loads((round1 / "train_summary.json").read_text())["coarse"]
        (own / "train_summary.json").write_text(json.dumps(s, indent=1))
    subprocess.run([sys.executable, "-m", "liverct_training.cli", "export", "--run", str(own), "--out",
                    str(own / "bundle"), "--no-demo", "--overwrite", "--no-data-checksums"], check=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/liverct-1.0"))
    ap.add_argument("--cache", type=Path, default=Path("runs/liverct-1.0-cache"))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time")
    ap.add_argument("--rounds", type=int, nargs="*", default=sorted(ROUNDS))
    ap.add_argument("--print", action="store_true", help="print the commands, train nothing")
    a = ap.parse_args(argv)
    run_dir, cache = a.run_dir.resolve(), a.cache.resolve()
    for r in a.rounds:
        if a.print:
            for name, held in RUNS:
                print(f"round {r} {name}: liverseg-train train {PRESET} "
                      + " ".join(repr(o) if " " in o else o for o in run_overrides(r, name, held, run_dir, cache)))
            continue
        pending = list(RUNS)
        while pending:
            batch, pending = pending[:a.jobs], pending[a.jobs:]
            procs = [(_train(r, n, h, run_dir, cache), n) for n, h in batch]
            for p, n in procs:
                if p.wait():
                    print(f"round {r} {n} failed: {run_dir / f'round{r}' / n / 'train.log'}", file=sys.stderr)
                    return 1
        for n, _ in RUNS:
            _export(run_dir / f"round{r}" / n, run_dir / "round1" / n)
    if a.print:
        return 0
    last = run_dir / f"round{max(a.rounds)}"
    return subprocess.run([sys.executable, "-m", "liverct_training.cli", "loo", PRESET, "--run-dir", str(last),
                           "--eval-only"]).returncode


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
