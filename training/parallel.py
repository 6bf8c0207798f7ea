"""Process-parallel data preparation (phantom generation, stage caching).

Each job writes its own files atomically and is idempotent, so a pool may run
them in any order and a failed or repeated run never leaves a half-written
entry. ``jobs``: 1 = in this process (the default, and what tests use),
0 = one worker per available core.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable


def resolve_jobs(jobs: int | None) -> int:
    """``data.prepare_jobs`` -> a worker count >= 1 (None -> 1; 0 or negative -> all available cores)."""
    n = int(jobs or 1) if jobs != 0 else 0
    if n <= 0:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


def run_jobs(fn: Callable[..., Any], arg_tuples: Iterable[tuple], jobs: int | None) -> list[Any]:
    """``[fn(*args) for args in arg_tuples]``, in a spawn process pool when ``jobs`` > 1.

    Spawn, not fork: the parent may already hold CUDA or torch thread pools,
    which a forked child must not inherit. Results keep the input order; the
    first exception is re-raised here.
    """
    args = list(arg_tuples)
    n = min(resolve_jobs(jobs), len(args))
    if n <= 1:
        return [fn(*a) for a in args]
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*args)))
