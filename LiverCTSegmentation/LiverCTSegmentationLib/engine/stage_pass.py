"""One pass of the cascade: resample a region to a stage's grid, normalise it, run the stage's network.

The region is resampled with SimpleITK (as in training) or, on a CUDA GPU, with
``resample_torch`` (same interpolation; saves copying the CT into ITK). A GPU
too full to resample falls back to ITK with a warning; a GPU too full for the
network is a ``ResourceError`` that says what to do.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .heap import release_free_memory
from .progress import Progress
from .volume import Volume

GPU_RESAMPLE_OOM = ("The GPU had too little free memory to resample this CT, so it was resampled on the CPU "
                    "(slower). Close other programs that use the GPU to get the full speed back.")


def stage_array(vol: Volume, stage, device=None) -> tuple[Volume, np.ndarray]:
    """(the stage's grid, its normalised float32 input). ``device``: resample there with torch.

    The grid carries geometry only (a zero-stride view, no voxel memory): the resampled float32
    copy is dropped once normalised, 4 bytes per stage voxel less during the network pass."""
    from .preprocess import normalise, resample_to_spacing, target_grid

    low = float(stage.intensity["clip"][0])
    orientation = getattr(stage, "orientation", "native")
    if device is None:
        rs = resample_to_spacing(vol, stage.spacing, "linear", default_value=low, orientation=orientation)
    else:
        import torch

        from .resample_torch import resample_linear

        size, sp, origin, direction = target_grid(vol, stage.spacing, orientation)
        src = torch.from_numpy(np.ascontiguousarray(vol.array)).to(device)
        arr = resample_linear(src, vol, size, sp, origin, direction, low).cpu().numpy()
        rs = Volume(arr, sp, origin, np.asarray(direction, float), metadata=dict(vol.metadata))
    x = normalise(rs.array, stage.intensity)
    return rs.with_array(np.broadcast_to(np.uint8(0), rs.array.shape)), x


def torch_resampler(choice: str, device):
    """The device to resample on with torch, or None for ITK (``SegmentOptions.resampler``)."""
    name = (choice or "auto").lower()
    if name not in ("auto", "itk", "torch"):
        raise ValueError(f"resampler must be 'auto', 'itk' or 'torch', got {choice!r}")
    if name == "torch" or (name == "auto" and device.type == "cuda"):
        return device
    return None


def free_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def itk_if_gpu_full(run: Callable[[Any], Any], resample_device, warnings: list) -> tuple[Any, Any]:
    """``(run(resample_device), resample_device)``; when that GPU runs out of memory,
    ``(run(None), None)``: ITK for this and the rest of the case, with one warning."""
    if resample_device is not None:
        import torch

        try:
            return run(resample_device), resample_device
        except torch.cuda.OutOfMemoryError:
            free_gpu()
            if GPU_RESAMPLE_OOM not in warnings:
                warnings.append(GPU_RESAMPLE_OOM)
    return run(None), None


def run_stage(bundle, name: str, vol: Volume, device, bf16: bool, overlap: float, batch_size: int,
              progress: Progress, max_window_voxels: int = 0, resample_device=None,
              warnings: Optional[list] = None, foreground: Optional[list] = None,
              probabilities: Optional[list] = None, variants: Sequence = ()) -> tuple[Volume, float, Any]:
    """Resample + normalise + sliding window; returns (label Volume on the stage grid, preprocess
    seconds, the resample device for the next steps). ``foreground``: a list to which the stage
    grid's per-voxel probability of any non-background class is appended. ``probabilities``: a
    list to which the per-class probabilities (float16 [classes, k, j, i]) of the plain pass are
    appended, then those of each test-time ``variants`` pass (``uncertainty.Variant``), undone
    onto the same grid; the labels are always the plain pass's."""
    import torch

    from .errors import ResourceError
    from .fast_unet import cpu_executor
    from .inference import sliding_window_predict
    from .networks import required_divisor, spatial_dims, window_size_invariant

    st = bundle.stages[name]
    t0 = time.perf_counter()
    (grid, x), resample_device = itk_if_gpu_full(lambda d: stage_array(vol, st, d), resample_device,
                                                 warnings if warnings is not None else [])
    t_pre = time.perf_counter() - t0
    net = bundle.network(name, device)
    if not window_size_invariant(st.architecture):
        # Instance/group norm take statistics over the window itself: a window larger than the
        # training patch changes the output (measured: liver Dice 0.85 -> 0.70), so tile at patch size.
        max_window_voxels = 0
    pad = float(x.min()) if x.size else 0.0

    def predict(image: np.ndarray, probs: Optional[list], fg: Optional[list] = None) -> np.ndarray:
        return sliding_window_predict(
            net, image, st.patch_size, st.n_classes, overlap=overlap, batch_size=batch_size, device=device,
            bf16=bf16, progress=progress, spatial_dims=spatial_dims(st.architecture),
            pad_value=pad, max_window_voxels=max_window_voxels,
            divisor=required_divisor(st.architecture), foreground_out=fg,
            executor=cpu_executor(net, device, bf16), probabilities_out=probs,
        )

    try:
        cls = predict(x, probabilities, foreground)
        for variant in variants if probabilities is not None else ():
            out: list = []
            predict(variant.apply(x, pad), out)
            probabilities.append(variant.undo(out.pop()))
    except torch.cuda.OutOfMemoryError as e:
        free_gpu()
        raise ResourceError(
            f"The GPU ran out of memory in the {name} pass ({str(e).splitlines()[0][:120]}). Close other "
            "programs that use the GPU, draw a region of interest around the liver, or choose device 'cpu'."
        ) from e
    del x
    release_free_memory()
    lut = np.asarray(st.class_to_label, dtype=np.uint8)
    return grid.with_array(lut[cls]), t_pre, resample_device
