"""Does a trained fine stage ever predict tumour? Draws training batches of a run and prints, per batch,
the mean tumour probability on tumour voxels and the highest tumour probability anywhere, beside the
softmax of the output layer's bias (the probability where every last-layer feature is zero).

A highest probability equal in every batch and close to the bias value means no feature points at
"tumour" (the collapse seen in the CPU anatomy runs, training/README.md).

    .venv/bin/python scripts/tumour_channel_check.py runs/anatomy-cpu3/final [--batches 20]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "LiverCTSegmentation")]

from liverct_training import train as T  # noqa: E402
from liverct_training.config import load_config  # noqa: E402
from liverct_training.export import load_state_dict  # noqa: E402
from liverct_training.sampling import PatchDataset  # noqa: E402
from LiverCTSegmentationLib.engine.networks import build_network  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="training run folder (config.yaml, split.json, best_fine.pt)")
    ap.add_argument("--batches", type=int, default=20)
    a = ap.parse_args()
    cfg = load_config(a.run / "config.yaml", [])
    st, t = cfg["stages"]["fine"], T.stage_settings(cfg, "fine")
    c2l = list(st["class_to_label"])
    tumor = T._tumor_class(c2l, cfg["data"]["task"])
    if tumor is None:
        raise SystemExit(f"{a.run}: the fine stage has no tumour class")
    splits = T.split_cases(cfg, a.run, write=False)
    cases = T.load_stage_cases(splits["train"], "fine", st, cfg, "fine train")
    aug = T.torch_augmenter(cfg, "fine", t.get("patch_size") or st["patch_size"])
    ds = PatchDataset(cases, aug.crop, 2 * a.batches, 123, float(t["fg_oversample"]), float(t["tumor_oversample"]),
                      raw_labels=True, weights=T._case_weights(splits["train"], cfg["data"]))
    net = build_network(st["architecture"])
    state = load_state_dict(a.run / "best_fine.pt")
    net.load_state_dict(state)
    net.eval()
    bias = state["outc.bias"]  # the 1x1 output convolution (networks.UNet.outc)
    print(f"softmax of the output bias, tumour: {float(torch.softmax(bias.float(), 0)[tumor]):.3f}")
    for it, (x, y) in enumerate(torch.utils.data.DataLoader(ds, batch_size=2)):
        x, y = aug(x, y, torch.Generator().manual_seed(it))
        with torch.no_grad():
            p = torch.softmax(net(x), 1)[:, tumor]
        on = p[y == tumor]
        print(f"batch {it}: tumour voxels {100 * float((y == tumor).float().mean()):.2f}%, mean p on them "
              f"{float(on.mean()) if on.numel() else float('nan'):.3f}, highest p anywhere {float(p.max()):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
