"""``liverseg-train``: one command, subcommands per step of the training workflow.

prepare / split / cache / evaluate / export live in F1's modules and are
imported only when used (so a missing optional dependency of one step does
not break the others); ``train`` is the loop in train.py.
"""
from __future__ import annotations

import importlib
import sys

from LiverCTSegmentationLib.engine.errors import LiverSegError

COMMANDS = {
    "prepare": ("prepare", "main_prepare", "convert DICOM series (3D-IRCADb, CHAOS) to NIfTI pairs"),
    "split": ("split", "main_split", "patient-level train/val/test split (JSON)"),
    "cache": ("cache", "main_cache", "resample + normalise cases into the stage cache"),
    "train": ("train", "main_train", "train the coarse/fine stages of a config"),
    "evaluate": ("evaluate", "main_evaluate", "evaluate a bundle with the full inference pipeline"),
    "export": ("export", "main_export", "write a model bundle + model card from a run dir"),
    "loo": ("loo", "main_loo", "leave-one-case-out training + evaluation, and the final all-case model"),
    "soup": ("soup", "main_soup", "average one stage's weights over the runs of a warm-start chain"),
}


def usage() -> str:
    lines = ["usage: liverseg-train COMMAND [options]  (COMMAND -h for help)", "", "commands:"]
    lines += [f"  {name:<9} {desc}" for name, (_, _, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"liverseg-train: unknown command '{cmd}'\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[cmd]
    try:
        fn = getattr(importlib.import_module(f"liverct_training.{module}"), func)
    except (ImportError, AttributeError) as exc:
        print(f"liverseg-train {cmd}: not available in this installation ({exc}). "
              "Install the training extras: pip install 'liverct-segmentation[training]'", file=sys.stderr)
        return 3
    try:
        return int(fn(rest) or 0)
    except LiverSegError as exc:
        print(f"liverseg-train {cmd}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"liverseg-train {cmd}: interrupted (resume training with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
