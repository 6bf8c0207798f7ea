"""Ray for the batch: is it installed, which cluster to join, and how big a pool of workers to start.

``liverseg --ray`` starts a private Ray instance on this machine; ``--ray auto`` joins the
cluster this machine belongs to (``ray start`` ran here); ``--ray ray://HOST:10001`` joins a
remote one through Ray Client. Ray is an optional dependency (the ``cluster`` extra).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..engine.errors import LiverSegError

LOCAL = "local"
INSTALL_HINT = "pip install 'liverct-segmentation[cluster]' (or: pip install 'ray[default]>=2.40')"
# Enough for the pool's small messages: cases travel as paths and results as records, never volumes.
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{2,5}$")


class RayUnavailable(LiverSegError):
    """Ray is not installed, or the cluster cannot be reached."""

    code = "resource"


def is_address(text: str) -> bool:
    """True for what ``--ray`` accepts as a cluster: local, auto, ray://..., HOST:PORT."""
    return text in (LOCAL, "auto") or "://" in text or bool(_HOST_PORT.match(text))


def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise RayUnavailable(f"--ray needs Ray, which is not installed in this Python ({err}). "
                             f"Install it: {INSTALL_HINT}") from err
    return ray


def connect(address: Optional[str]) -> bool:
    """Join (or start) the Ray cluster for ``address``; True when this call started Ray (and the
    caller must shut it down). An already initialised Ray (a notebook, a test) is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict = {"logging_level": "WARNING", "configure_logging": True}
    try:
        if address in (None, "", LOCAL):
            # A private instance: Ray's notice that it protects its ports with a token says nothing to do.
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(address="local", include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        if "AuthToken" in f"{err} {err.__cause__}":
            raise RayUnavailable(
                f"the Ray cluster at '{address}' wants its authentication token. Set RAY_AUTH_MODE=token, with "
                "the cluster's token in ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH), and rerun.") from err
        raise RayUnavailable(
            f"cannot join the Ray cluster at '{address}' ({err}). Check that 'ray status' works on "
            "this machine (for 'auto'), or that ray://HOST:10001 is the head's client port.") from err
    return True


@dataclass
class PoolPlan:
    """How many case workers to start and what each reserves and uses."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int
    device: str

    def describe(self) -> str:
        per = f"1 GPU + {self.threads} threads" if self.num_gpus else f"{self.threads} CPU threads"
        return f"{self.actors} Ray worker{'s' if self.actors != 1 else ''} ({per} each)"


def plan_pool(resources: dict, device: str, actors: Optional[int] = None,
              threads: Optional[int] = None) -> PoolPlan:
    """Size the pool from the cluster's resources (``ray.cluster_resources()``).

    GPUs (device auto or cuda, and the cluster has some): one worker per GPU, each with an equal
    share of the CPUs for reading and writing; ``actors`` caps the count. CPUs: ``threads`` per
    worker (default 4, fewer on a smaller machine) and as many workers as fit, or ``actors``
    workers sharing the CPUs. Given both, each of the ``actors`` workers reserves ``threads``
    CPUs, whether the cluster has them yet or not (an autoscaler starts nodes for them)."""
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0))
    if actors is not None and actors < 1:
        raise ValueError("the number of Ray workers must be at least 1")
    if device in ("auto", "cuda") and gpus >= 1:
        n = min(gpus, actors or gpus)
        t = threads or max(1, cpus // gpus)
        return PoolPlan(n, float(min(t, max(1, cpus // n))), 1.0, t, device)
    if device == "cuda":
        raise RayUnavailable("--device cuda, but the Ray cluster has no GPU. Use --device cpu, or add GPU nodes.")
    if device == "mps":
        raise RayUnavailable("--device mps is not available on Ray workers. Use --device cpu.")
    if threads is not None:  # as asked: an autoscaling cluster adds nodes for workers that do not fit yet
        n = actors or max(1, cpus // threads)
        return PoolPlan(n, float(threads), 0.0, threads, "cpu")
    threads = max(1, cpus // actors) if actors else min(4, cpus)
    n = actors or max(1, cpus // threads)
    return PoolPlan(n, _reserve(min(threads, cpus / n)), 0.0, threads, "cpu")


def _reserve(cpus: float) -> float:
    """CPUs a worker reserves: its share of the cluster, so N requested workers all get placed
    (whole CPUs from one up; Ray takes fractions only below one)."""
    return float(int(cpus)) if cpus >= 1 else round(cpus, 4)


def check_ray_args(args: Any) -> str:
    """The CLI's --ray/--ray-actors, checked; '' when fine, else what to change. ``--ray ct.nii.gz``
    (argparse takes the file as the address) puts the file back first among the inputs."""
    if args.ray is not None and not is_address(args.ray):
        args.inputs.insert(0, args.ray)
        args.ray = LOCAL
    if args.ray_actors is not None:
        if args.ray is None:
            return "--ray-actors needs --ray (the workers are Ray's)."
        if args.ray_actors < 1:
            return "--ray-actors must be at least 1."
    return ""
