"""Process-parallel data preparation (phantom generation, stage caching).

Each job writes its own files atomically and is idempotent, so a pool may run
them in any order and a failed or repeated run never leaves a half-written
entry. ``jobs``: 1 = in this process (the default, and what tests use),
0 = one worker per available core.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterable


def resolve_jobs(jobs: int | None) -> int:
    """``data.prepare_jobs`` -> a worker count >= 1 (None -> 1; 0 or negative -> all available cores)."""
    from LiverCTSegmentationLib.engine.device import usable_cores

    n = 1 if jobs is None else int(jobs)
    return n if n >= 1 else usable_cores()


def run_jobs(fn: Callable[..., Any], arg_tuples: Iterable[tuple], jobs: int | None) -> list[Any]:
    """``[fn(*args) for args in arg_tuples]``, in a process pool when ``jobs`` > 1.

    Fork where the platform has it, as torch's DataLoader workers do: spawn would re-run the
    caller's main script in every worker, which an unguarded training script (no
    ``if __name__ == "__main__"``) turns into recursive training. The jobs only use numpy and
    SimpleITK (whose thread pool is fork-safe), never CUDA. Results keep the input order; the
    first exception is re-raised here.
    """
    args = list(arg_tuples)
    n = min(resolve_jobs(jobs), len(args))
    if n <= 1:
        return [fn(*a) for a in args]
    import multiprocessing as mp

    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        return list(pool.map(fn, *zip(*args)))
