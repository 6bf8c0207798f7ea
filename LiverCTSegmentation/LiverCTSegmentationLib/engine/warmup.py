"""Start a GPU while the first case is still being read.

The first case in a process pays for creating the CUDA context, moving the
networks to the GPU and loading the kernels on first use (0.8 s of the first
coarse pass on an H200 host, ``bench/RESULTS.md``). ``start_warm_up`` does that
in a background thread, so it overlaps reading the input file (the command
line, batches, and Slicer's background worker all read a file first). On a CPU
there is nothing to warm up and no thread is started; on every device the
I/O library is loaded before the first case.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Optional

log = logging.getLogger(__name__)


def _warm(bundle: Any, device: Any, bf16: bool) -> None:
    import numpy as np
    import torch

    from .inference import _autocast
    from .networks import required_divisor, spatial_dims
    from .resample_torch import resample_linear
    from .volume import Volume

    for name in bundle.stage_names:
        st = bundle.stages[name]
        net = bundle.network(name, device)
        d = max(8, required_divisor(st.architecture))
        shape = (d,) * spatial_dims(st.architecture)
        x = torch.zeros((1, int(st.architecture.get("in_channels", 1))) + shape, device=device)
        with torch.inference_mode(), _autocast(device, bf16):
            net(x)
    src = Volume(np.zeros((4, 4, 4), np.float32))
    resample_linear(torch.zeros((4, 4, 4), device=device), src, (3, 3, 3), (1.3, 1.3, 1.3), (0.0, 0.0, 0.0),
                    np.eye(3), 0.0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def start_warm_up(bundle: Any, device_name: str = "auto") -> Optional[threading.Thread]:
    """A daemon thread warming ``bundle``'s networks on the CUDA device ``device_name`` resolves to,
    or None (CPU, or no usable GPU). Failures are only logged: the case itself reports them.

    On every device it first loads SimpleITK, which every case reads and resamples with: once per
    process here, like torch, instead of inside the first case's read stage (0.11-0.14 s on a 2-core
    VM), so a case's stage times are its own work, as in the I/O floor the benchmark compares with."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:  # pragma: no cover - a core dependency; the read reports its absence
        pass
    try:
        from .device import choose_device, use_bf16

        device = choose_device(device_name)
    except Exception:  # the run reports an unusable device with its own message
        return None
    if device.type != "cuda":
        return None

    def run() -> None:
        try:
            _warm(bundle, device, use_bf16(device))
        except Exception as e:  # pragma: no cover - depends on the GPU
            log.debug("GPU warm-up failed (the case will report any real problem): %s", e)

    t = threading.Thread(target=run, name="liverct-gpu-warm-up", daemon=True)
    t.start()
    return t
