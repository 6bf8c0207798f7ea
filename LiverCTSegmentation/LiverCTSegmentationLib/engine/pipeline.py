"""The segmentation cascade: ``segment(volume, bundle, options, progress)``.

1. Coarse: the whole volume (or the ROI) is resampled (SimpleITK linear) to
   the coarse spacing (e.g. 3 mm), normalised, and run through a sliding
   window; any non-zero label counts as liver; the largest connected
   component is kept (cheap at low resolution). No liver -> an empty labelmap
   and a warning, not an exception. Lesion-only bundles (task ``lung_tumor``,
   ``postprocess.lesions_only``) keep every component: there is no organ, and
   all lesions count.
2. Fine (if the bundle has one): the coarse liver's physical bounding box plus
   ``margin_mm`` is converted to an index box of the *input* grid; only that
   box is cropped and resampled to the fine spacing (same direction frame as
   the input), then sliding window and ``class_to_label``.
3. Post-processing (``postprocess.postprocess``, or ``postprocess_lesions``
   for lesion-only bundles: speck removal only) at the fine (or coarse)
   resolution.
4. The uint8 labels are pasted back onto the input's exact grid through
   physical space (oblique, flipped and RAS inputs work): each nested region
   is interpolated linearly and cut at 0.5, so boundaries are smooth at the
   native resolution; only the labels' box is resampled, in bounded slabs.
5. Statistics on the final labelmap, and (organ bundles) ``plausibility``
   warnings when the result does not look like a liver (volume, scan edge,
   side, HU, the coarse network's mean liver probability).

Resampling (steps 1, 2 and the smooth paste-back of 4) is SimpleITK's on the CPU,
as in training; on a CUDA GPU it runs there (``resample_torch``, the same
interpolation to float32 rounding), which saves copying the whole CT into ITK
(``SegmentOptions.resampler``).

Each stage's region is run as ONE network window when it fits
``options.max_window_voxels`` (default ``inference.default_window_voxels``,
~168^3; half that for float32 on a GPU: a whole CT at 3 mm, a liver box at
1.5 mm), padded to the network's
divisor; only larger regions use overlapping Gaussian-blended windows.
``fast=True`` uses window overlap 0.25 instead of ``options.overlap`` for
those (about 2-3x fewer windows); nothing else changes (there are no extra
passes such as test-time mirroring in either mode).

Threads: ``options.threads``, else every usable core unless the user pinned
``OMP_NUM_THREADS`` (then torch's own choice is left alone).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .errors import InputError, ResourceError, is_cpu_out_of_memory
from .postprocess import lesions_only
from .progress import Progress
from .stage_pass import GPU_RESAMPLE_OOM, itk_if_gpu_full, run_stage, torch_resampler
from .uncertainty import VARIANTS
from .volume import Volume

__all__ = ["SegmentOptions", "SegmentationResult", "segment", "GPU_RESAMPLE_OOM", "FAST_OVERLAP"]

FAST_OVERLAP = 0.25
# Expected liver Dice under test-time augmentation below which a result is flagged: in
# docs/confidence.md the runs below it were mostly the ones with a liver Dice under 0.75.
LOW_CONFIDENCE = 0.95


@dataclass
class SegmentOptions:
    device: str = "auto"
    fast: bool = False
    roi_lps: Optional[tuple] = None  # (lo(3), hi(3)) LPS mm: restrict the search to this box
    threads: Optional[int] = None
    batch_size: int = 2
    overlap: float = 0.5
    bf16: Optional[bool] = None  # None: where the hardware runs it natively; False: never
    max_window_voxels: Optional[int] = None  # None: inference.default_window_voxels; 0: always tile
    # Resampling (both stages' inputs and the smooth paste-back): "itk" (SimpleITK, as in training),
    # "torch" (resample_torch on the inference device, same interpolation to float32 rounding), or
    # "auto": torch on a CUDA GPU, where it saves copying the CT into ITK; ITK elsewhere.
    resampler: str = "auto"
    # Extra outputs from the last stage: its liver and tumour probabilities (uint8 0-255 on the input
    # grid, from the same pass), and a test-time-augmentation uncertainty map + confidence score
    # (engine/uncertainty.py; 4 more passes of that stage).
    probabilities: bool = False
    uncertainty: bool = False


@dataclass
class SegmentationResult:
    labelmap: Volume
    statistics: Any = None
    timings: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    bundle_name: str = ""
    bundle_version: str = ""
    device: str = "cpu"
    # name -> uint8 Volume on the input grid: "liver_probability", "tumor_probability" (0-255 for
    # 0-1), "uncertainty" (0-255 for normalised entropy 0-1); only the ones asked for.
    maps: dict = field(default_factory=dict)
    confidence: Optional[float] = None  # mean liver Dice of the TTA variants vs the plain pass


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The coarse liver: the foreground's largest component (a seam bench/pipeline_timing_c1.py swaps)."""
    from .postprocess import largest_component

    return largest_component(mask)


def _target_name(bundle) -> str:
    """What the warnings call the finding: "liver" for organ bundles, else the bundle's label names."""
    if not lesions_only(bundle.description):
        return "liver"
    names = [str(lab.get("name", "")).lower() for lab in bundle.labels if lab.get("name")]
    return " or ".join(names) or "lesion"


def _lesion_statistics(label: Volume, bundle):
    """Statistics of a lesion-only labelmap: its labels are lesions (counted, measured), there is no organ."""
    from dataclasses import replace

    from .statistics import compute_statistics

    values = sorted(int(lab["value"]) for lab in bundle.labels) or [1]
    arr = label.array if len(values) == 1 else (label.array > 0).astype(np.uint8) * values[0]
    # An absent organ value: organ volume is then the lesions only, reported as 0 with burden 0.
    stats = compute_statistics(label.with_array(arr), liver_label=255, tumor_label=values[0])
    return replace(stats, liver_ml=0.0, burden_percent=0.0)


def _to_input_grid(values: np.ndarray, grid: Volume, region: Volume, lo_ijk, volume: Volume) -> Volume:
    """A [0, 1] map on a stage grid -> uint8 0-255 on the input's grid (linear inside the stage's
    region, the input's voxels from ``lo_ijk`` on; 0 outside it): only the region's box is resampled."""
    from .preprocess import resample_like

    on_region = resample_like(grid.with_array(values.astype(np.float32)), region, "linear", 0.0).array
    out = np.zeros(volume.shape_kji[:3], np.uint8)
    i0, j0, k0 = (int(v) for v in lo_ijk)
    kk, jj, ii = on_region.shape
    out[k0:k0 + kk, j0:j0 + jj, i0:i0 + ii] = np.clip(np.rint(on_region * 255.0), 0, 255).astype(np.uint8)
    return volume.with_array(out)


def _probability_maps(passes: list, class_to_label, grid: Volume, region: Volume, lo_ijk, volume: Volume,
                      probabilities: bool, uncertainty: bool, confidence: list) -> dict:
    """The requested maps from the last stage's passes ([plain, TTA variants...] per-class probabilities)."""
    from .uncertainty import summarise

    c2l = list(class_to_label)
    organ = [c for c, lab in enumerate(c2l) if int(lab) in (1, 2)] or list(range(1, len(c2l)))
    maps = {}
    if probabilities:
        plain = passes[0].astype(np.float32)
        maps["liver_probability"] = _to_input_grid(plain[organ].sum(0), grid, region, lo_ijk, volume)
        if 2 in c2l:
            maps["tumor_probability"] = _to_input_grid(plain[c2l.index(2)], grid, region, lo_ijk, volume)
    if uncertainty:
        summary = summarise(passes, organ)
        maps["uncertainty"] = _to_input_grid(summary.uncertainty, grid, region, lo_ijk, volume)
        confidence.append(summary.confidence)
    return maps


def _tumour_box(label: Volume, volume: Volume) -> Optional[tuple]:
    """[k, j, i] slices of ``volume`` holding every tumour voxel of the stage-grid ``label`` pasted back
    (one stage voxel of margin for the smooth paste-back), or None when there is no tumour."""
    from .preprocess import physical_box_to_index_range, voxel_box_corners

    kk, jj, ii = np.nonzero(label.array == 2)
    if kk.size == 0:
        return None
    corners = voxel_box_corners(label, (ii.min(), jj.min(), kk.min()), (ii.max(), jj.max(), kk.max()))
    rng = physical_box_to_index_range(volume, corners, margin_mm=float(max(label.spacing)))
    if rng is None:  # pragma: no cover - the stage grid lies inside the input by construction
        return None
    lo, hi = rng
    return tuple(slice(int(lo[a]), int(hi[a]) + 1) for a in (2, 1, 0))


def _roi_crop(volume: Volume, roi_lps) -> tuple[Volume, np.ndarray]:
    """The ROI's box of ``volume`` and its first voxel (i, j, k)."""
    from .preprocess import crop_box, physical_box_to_index_range

    lo, hi = (np.asarray(v, float) for v in roi_lps)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    rng = physical_box_to_index_range(volume, corners)
    if rng is None:
        raise InputError("The region of interest does not overlap the image. Draw the ROI over the liver and retry.")
    return crop_box(volume, *rng), np.asarray(rng[0])


def segment(volume: Volume, bundle, options: Optional[SegmentOptions] = None,
            progress: Optional[Progress] = None) -> SegmentationResult:
    """Segment liver (and tumours) of ``volume``; the labelmap is on ``volume``'s exact grid.

    Running out of host memory anywhere (torch's allocator or numpy) is a ResourceError saying what to do.
    """
    progress = progress or Progress()
    try:
        return _segment(volume, bundle, options, progress)
    except (MemoryError, RuntimeError) as e:
        step = getattr(progress, "_stage", "") or "segmentation"
        if type(e).__name__ == "OutOfMemoryError":  # CUDA, outside the network pass (run_stage has its own)
            raise ResourceError(
                f"The GPU ran out of memory during the {step} step. Close other programs that use the GPU, "
                "draw a region of interest around the liver, or choose device 'cpu'."
            ) from e
        if not is_cpu_out_of_memory(e):
            raise
        raise ResourceError(
            f"The computer ran out of memory during the {step} step. Close other programs, use fewer threads, "
            "or crop the CT to the abdomen (or draw a region of interest around the liver), then retry."
        ) from e


def _segment(volume: Volume, bundle, options: Optional[SegmentOptions], progress: Progress) -> SegmentationResult:
    from .device import choose_device, setup_threads, use_bf16
    from .preprocess import crop_box, physical_box_to_index_range, resample_labels_to_reference, voxel_box_corners

    options = options or SegmentOptions()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    if volume.array.ndim != 3:
        raise InputError(f"Expected a 3D image, got an array of shape {volume.array.shape}.")
    device = choose_device(options.device)
    bf16 = use_bf16(device) if options.bf16 is None else (bool(options.bf16) and use_bf16(device))
    if options.threads:
        setup_threads(options.threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        setup_threads(None)  # all usable cores (affinity-aware)
    if options.max_window_voxels is None:
        from .inference import default_window_voxels

        max_window = default_window_voxels(bf16, device.type)
    else:
        max_window = max(0, int(options.max_window_voxels))
    overlap = FAST_OVERLAP if options.fast else float(options.overlap)
    resample_device = torch_resampler(options.resampler, device)
    has_fine = "fine" in bundle.stages
    lesion_bundle = lesions_only(bundle.description)
    target = _target_name(bundle)
    extra_maps: dict = {}  # --probabilities / --uncertainty outputs on the input grid
    confidence: list = []
    want_probs = bool(options.probabilities or options.uncertainty)
    coarse_fg: list = []  # organ bundles: the coarse pass's non-background probability map
    liver_probability: list = []  # its mean inside the coarse liver (the plausibility check's input)

    def result(label: Volume) -> SegmentationResult:
        progress.stage("statistics", 0.99, 1.0)
        t = time.perf_counter()
        stats = None
        try:
            from .statistics import compute_statistics

            stats = _lesion_statistics(label, bundle) if lesion_bundle else compute_statistics(label)
        except ImportError:  # pragma: no cover
            warnings.append("Statistics are unavailable in this installation.")
        if not lesion_bundle and label.array.any():  # an empty result has its "No liver found" already
            from .plausibility import plausibility_warnings

            warnings.extend(plausibility_warnings(volume, label, liver_probability[0] if liver_probability else None))
        timings["statistics"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        progress.report(1.0, "done")
        res = SegmentationResult(label, stats, timings, warnings, bundle.name, bundle.version, str(device))
        res.maps, res.confidence = extra_maps, confidence[0] if confidence else None
        if res.confidence is not None and res.confidence < LOW_CONFIDENCE:
            warnings.append(f"Review before use: the liver changed under small shifts of the image (confidence "
                            f"{res.confidence:.3f} < {LOW_CONFIDENCE}); see the uncertainty map.")
        return res

    # ---------------------------------------------------------- coarse
    search, search_lo = (volume, np.zeros(3, int)) if options.roi_lps is None else _roi_crop(volume, options.roi_lps)
    progress.stage("coarse", 0.0, 0.45 if has_fine else 0.85)
    t = time.perf_counter()
    last_probs: Optional[list] = [] if want_probs and not has_fine else None
    coarse, t_pre, resample_device = run_stage(bundle, "coarse", search, device, bf16, overlap, options.batch_size,
                                                progress, max_window, resample_device, warnings,
                                                None if lesion_bundle else coarse_fg, last_probs,
                                                VARIANTS if options.uncertainty else ())
    timings["preprocess"] = t_pre
    timings["coarse"] = time.perf_counter() - t - t_pre
    # Lesion bundles: every component is a finding (the largest alone would drop all other lesions).
    liver = (coarse.array > 0) if lesion_bundle else _largest_component(coarse.array > 0)
    if coarse_fg and liver.any():
        liver_probability.append(float(coarse_fg.pop()[liver].mean()))
    if not liver.any():
        if lesion_bundle:
            warnings.append(f"No {target} found (or the region of interest misses it). The result is empty.")
        else:
            warnings.append(
                "No liver found: the image may not contain the liver, may not be an abdominal CT, "
                "or the region of interest misses it. The result is empty."
            )
        empty = Volume(np.zeros(volume.shape_kji[:3], np.uint8), volume.spacing, volume.origin,
                       volume.direction.copy())
        return result(empty)

    # ------------------------------------------------------------ fine
    if has_fine:
        progress.stage("fine", 0.45, 0.9)
        t = time.perf_counter()
        st = bundle.stages["fine"]
        kk, jj, ii = np.nonzero(liver)
        lo = np.array([ii.min(), jj.min(), kk.min()])
        hi = np.array([ii.max(), jj.max(), kk.max()])
        corners = voxel_box_corners(coarse, lo, hi)
        rng = physical_box_to_index_range(volume, corners, margin_mm=st.margin_mm)
        if rng is None:  # pragma: no cover - coarse grid lies inside the input by construction
            raise InputError("Internal geometry error: liver box outside the image.")
        box = crop_box(volume, *rng)
        last_probs = [] if want_probs else None
        fine, t_pre, resample_device = run_stage(bundle, "fine", box, device, bf16, overlap, options.batch_size,
                                                  progress, max_window, resample_device, warnings, None,
                                                  last_probs, VARIANTS if options.uncertainty else ())
        timings["preprocess"] += t_pre
        timings["fine"] = time.perf_counter() - t - t_pre
        label = fine
    else:
        label = coarse.with_array(np.where(liver, coarse.array, 0).astype(np.uint8))

    if last_probs:
        t = time.perf_counter()
        region, grid, lo = (box, fine, rng[0]) if has_fine else (search, coarse, search_lo)
        st = bundle.stages["fine" if has_fine else "coarse"]
        extra_maps.update(_probability_maps(last_probs, st.class_to_label, grid, region, lo, volume,
                                            options.probabilities, options.uncertainty, confidence))
        last_probs.clear()
        timings["maps"] = time.perf_counter() - t

    # ----------------------------------------------------- postprocess
    progress.stage("postprocess", 0.9, 0.97)
    t = time.perf_counter()
    from .postprocess import postprocess, postprocess_lesions  # looked up per call: tests replace them

    clean = postprocess_lesions if lesion_bundle else postprocess
    cleaned = clean(label.array, label.spacing, bundle.postprocess)
    label = label.with_array(np.asarray(cleaned, dtype=np.uint8))
    timings["postprocess"] = time.perf_counter() - t
    if not label.array.any():
        warnings.append(f"No {target} found after post-processing. The result is empty.")

    # ------------------------------------------------------ paste back
    progress.stage("resample", 0.97, 0.99)
    t = time.perf_counter()
    out, _ = itk_if_gpu_full(lambda d: resample_labels_to_reference(label, volume, smooth=True, device=d),
                             resample_device, warnings)
    box = None if lesion_bundle else _tumour_box(label, volume)
    if box is not None:  # the smooth paste-back can cut slivers off a lesion: not lesions of their own
        from .postprocess import DEFAULTS, drop_lesion_fragments

        min_mm3 = float({**DEFAULTS, **bundle.postprocess}["min_lesion_mm3"])
        arr = out.array if out.array.flags.writeable else np.array(out.array, dtype=np.uint8)
        out = out.with_array(drop_lesion_fragments(arr, out.spacing, min_mm3, box))
    timings["resample"] = time.perf_counter() - t
    return result(out)
