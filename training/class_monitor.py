"""Is every class being learned? The mean probability a network gives each class on its own voxels.

A class can silently stall: the liver/tumour fine stage of the CPU anatomy runs (2026-12-04)
trained 1400 iterations with the tumour in every batch and found none of the held-out LiTS crop's
70 tumours; its highest tumour probability anywhere stayed near the softmax of the output bias
(0.299 vs 0.297). The loss curve hides it (the liver term keeps improving). Tracking the soft
recall per class, from the logits the training step computes anyway, shows it after one epoch.
"""
from __future__ import annotations

from typing import Mapping, Sequence

UNLEARNED_BELOW = 0.25  # mean probability on a class's own voxels under which it is "not learned"


class SoftRecall:
    """Per class: sum of the softmax probability of class c over the voxels whose target is c."""

    def __init__(self, n_classes: int) -> None:
        self.n = int(n_classes)
        self.reset()

    def reset(self) -> None:
        self.prob = None  # tensors on the training device: no host sync per step
        self.count = None

    def update(self, logits, target) -> None:
        """``logits`` [B, C, *spatial], ``target`` [B, *spatial] class indices (no gradient kept)."""
        import torch

        with torch.no_grad():
            # bce reads any value > 0 as foreground (channel 1): count it there, as the loss does
            t = target.long().clamp(0, logits.shape[1] - 1).unsqueeze(1)
            p_true = torch.softmax(logits.detach().float(), dim=1).gather(1, t).flatten()
            t = t.flatten()
            prob = torch.bincount(t, weights=p_true, minlength=self.n)[: self.n]
            count = torch.bincount(t, minlength=self.n)[: self.n]
        self.prob = prob if self.prob is None else self.prob + prob
        self.count = count if self.count is None else self.count + count

    def values(self) -> dict[int, float]:
        """{class: mean probability on its voxels} for the classes seen in the targets."""
        if self.count is None:
            return {}
        prob, count = self.prob.double().cpu().tolist(), self.count.cpu().tolist()
        return {c: prob[c] / count[c] for c in range(self.n) if count[c]}


def unlearned(recall: Mapping[int, float], names: Sequence[str] | None = None,
              below: float = UNLEARNED_BELOW) -> list[str]:
    """Foreground classes (index > 0) seen in the targets whose soft recall is under ``below``."""
    return [(names[c] if names and c < len(names) else f"class {c}") for c, v in sorted(recall.items())
            if c > 0 and v < below]
