"""Seeding and deterministic-algorithm switches, so two runs with one seed are bit-identical.

Patch sampling draws from a generator seeded by (seed, rank, epoch, sample index),
so results do not depend on the number of DataLoader workers either.
"""
from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python/numpy/torch and (optionally) force deterministic kernels."""
    import torch

    # Must be set before the first cuBLAS call for deterministic GEMMs on CUDA.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=False)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker seeding: derive python/numpy seeds from torch's per-worker seed."""
    import torch

    s = torch.initial_seed() % (2**32)
    random.seed(s)
    np.random.seed(s)
    torch.set_num_threads(1)  # workers must not oversubscribe the cores the model uses


def make_generator(seed: int):
    """A torch.Generator for DataLoader shuffling / worker base seeds."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g


def sample_rng(seed: int, rank: int, epoch: int, index: int) -> np.random.Generator:
    """Generator for one training sample: independent of worker count and order."""
    return np.random.default_rng([int(seed), int(rank), int(epoch), int(index)])


def rng_state() -> dict:
    """All RNG states (for resumable checkpoints) as tensors and numbers only: a checkpoint must load
    with ``torch.load(weights_only=True)``, which refuses numpy arrays."""
    import torch

    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` recorded, bit for bit."""
    import torch

    py, npy = state["python"], state["numpy"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    np.random.set_state((str(npy["name"]), npy["keys"].numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["gauss"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
