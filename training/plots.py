"""PNG plots for a training run: loss / Dice curves and a validation overlay."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Training loss and validation Dice per epoch (history rows: epoch, train_loss, val_dice*)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [h["epoch"] for h in history]
    a1.plot(ep, [h["train_loss"] for h in history], marker="o", label="train loss")
    a1.set_xlabel("epoch"); a1.set_ylabel("loss"); a1.legend(); a1.grid(alpha=0.3)
    keys = sorted({k for h in history for k in h if k.startswith("val_dice")})
    for k in keys:
        pts = [(h["epoch"], h[k]) for h in history if k in h]
        if pts:
            a2.plot(*zip(*pts), marker="o", label=k)
    a2.set_xlabel("epoch"); a2.set_ylabel("Dice"); a2.set_ylim(0, 1); a2.grid(alpha=0.3)
    if keys:
        a2.legend()
    fig.suptitle(title)
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, path: str | Path,
                 title: str = "", classes: Sequence[int] | None = None) -> Path:
    """Axial slice (the one with most truth foreground) with true (solid) and predicted (dashed) contours."""
    plt = _plt()
    if image.ndim == 3:
        area = (truth > 0).reshape(truth.shape[0], -1).sum(1)
        k = int(area.argmax()) if area.max() > 0 else image.shape[0] // 2
        image, pred, truth = image[k], pred[k], truth[k]
    classes = classes or sorted(int(c) for c in np.unique(np.concatenate([np.unique(truth), np.unique(pred)])) if c > 0)
    colors = ["tab:orange", "tab:green", "tab:cyan", "tab:pink"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image.astype(np.float32), cmap="gray")
    for n, c in enumerate(classes):
        col = colors[n % len(colors)]
        if (truth == c).any():
            ax.contour(truth == c, levels=[0.5], colors=col, linewidths=1.2)
        if (pred == c).any():
            ax.contour(pred == c, levels=[0.5], colors=col, linewidths=1.2, linestyles="dashed")
    ax.set_title(title or "truth solid, prediction dashed")
    ax.axis("off")
    out = _save(fig, Path(path))
    plt.close(fig)
    return out
