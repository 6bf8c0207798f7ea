"""Device and precision choice, and CPU thread setup.

bf16 autocast is only used where the hardware runs it natively (CUDA with
bf16, or CPUs with AVX512-BF16/AMX): elsewhere it is emulated and slower than
float32, so targets are met in float32 and bf16 is a bonus.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional

from .errors import ResourceError


def choose_device(name: str = "auto"):
    """``auto``: cuda > mps > cpu. Asking for an absent device raises ResourceError."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ResourceError(
                "A CUDA GPU was requested but none is usable (no NVIDIA GPU, no driver, or a CPU-only "
                "PyTorch). Choose device 'cpu' or 'auto', or install a CUDA build of PyTorch."
            )
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ResourceError("Apple GPU (mps) was requested but is not available. Choose device 'cpu' or 'auto'.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ResourceError(f"Unknown device '{name}'. Use auto, cpu, cuda or mps.")


@lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    try:
        import torch

        cap = str(torch.backends.cpu.get_cpu_capability()).upper()
        if "AMX" in cap:
            return True
    except Exception:  # pragma: no cover - old torch
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def use_bf16(device) -> bool:
    """True where bf16 autocast is native (fast) on ``device``."""
    import torch

    if os.environ.get("LIVERCT_NO_BF16") == "1":
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "cpu":
        return _cpu_has_native_bf16()
    return False


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def setup_threads(threads: Optional[int] = None) -> int:
    """Set torch's intra-op threads (default: all usable cores); returns the number used."""
    import torch

    if threads is None or threads <= 0:
        threads = usable_cores()
    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
