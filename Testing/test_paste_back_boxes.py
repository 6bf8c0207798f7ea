"""The smooth paste-back (preprocess.resample_labels_to_reference) interpolates each label value
over its own voxel box only: the same labels as interpolating every value over the whole label
grid's box (the path before issue 15, kept verbatim below), for far less resampling when a
value (a small tumour) covers a small part of the box."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from LiverCTSegmentationLib.engine import preprocess as P
from LiverCTSegmentationLib.engine.volume import Volume


def whole_box_paste(lab: Volume, reference: Volume) -> np.ndarray:
    """The ITK smooth paste-back as it was: every value resampled over the label grid's whole box."""
    out = np.zeros(reference.shape_kji[:3], dtype=np.uint8)
    rng = P.physical_box_to_index_range(reference, P.voxel_box_corners(lab, (0, 0, 0), np.asarray(lab.size_ijk) - 1))
    if rng is None or not lab.array.any():
        return out
    lo, hi = rng
    values = [int(v) for v in np.unique(lab.array) if v]
    masks = [lab.with_array((lab.array >= v).astype(np.float32)) for v in values]
    plane = int((hi[0] - lo[0] + 1) * (hi[1] - lo[1] + 1))
    step = max(1, P.SMOOTH_CHUNK_VOXELS // max(plane, 1))
    for k0 in range(int(lo[2]), int(hi[2]) + 1, step):
        k1 = min(int(hi[2]), k0 + step - 1)
        c_lo = np.array([lo[0], lo[1], k0])
        size = np.array([hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, k1 - k0 + 1])
        origin = reference.physical_points(c_lo[None, :].astype(float))[0]
        slab = out[k0:k1 + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
        for v, m in zip(values, masks):
            f = P._resample_onto(m, size, reference.spacing, origin, reference.direction, "linear", 0.0)
            slab[f >= 0.5] = v
    return out


def _labels(shape_kji, seed: int) -> np.ndarray:
    """A blocky organ with speckle (1) and a small tumour (2) inside it."""
    rng = np.random.default_rng(seed)
    g = np.zeros(shape_kji, np.uint8)
    k, j, i = shape_kji
    g[2:k - 3, 3:j - 2, 2:i - 4] = 1
    g[rng.random(shape_kji) < 0.04] = 1
    t = rng.integers(3, np.array(shape_kji) - 5)
    g[t[0]:t[0] + 2, t[1]:t[1] + 3, t[2]:t[2] + 2] = 2
    return g


# Spacings without simple ratios to each other: no output voxel lies exactly halfway between two
# label voxels, where interpolation gives exactly 0.5 and float rounding (of the slab or box a
# voxel is computed in, in the old path as in this one) decides the label.
@pytest.mark.parametrize("seed", range(6))
def test_per_value_boxes_give_the_whole_box_labels(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    d = Rotation.from_euler("xyz", rng.uniform(-25, 25, 3), degrees=True).as_matrix() if seed % 2 else \
        np.diag(rng.choice([-1.0, 1.0], 3))
    ref = Volume(np.zeros((36, 48, 52), np.int16), (0.83, 0.91, 1.73), tuple(rng.uniform(-5, 5, 3)), d)
    lab = Volume(_labels((14, 16, 18), seed), (1.52, 1.47, 1.51),
                 tuple(np.asarray(ref.origin) + d @ rng.uniform(3, 9, 3)), d)
    new = P.resample_labels_to_reference(lab, ref, smooth=True).array
    np.testing.assert_array_equal(new, whole_box_paste(lab, ref))
    assert (new == 2).any() and (new == 1).any()


def test_real_ct_grid_gives_the_whole_box_labels(real_data_dir: Path) -> None:
    from LiverCTSegmentationLib.engine import io

    ct = io.read_volume(real_data_dir / "chaos_evalsample_ct.nii.gz")
    ref = ct.with_array(np.broadcast_to(np.int16(0), ct.array.shape))  # its grid; voxels are not read
    # Labels on a 1.5 mm canonical grid over a box of the CT, as the fine stage makes them.
    box = P.crop_box(ref, (60, 140, 10), (330, 400, 70))
    size, spacing, origin, direction = P.target_grid(box, (1.5, 1.5, 1.5), "canonical")
    lab = Volume(_labels(tuple(size[::-1]), 7), spacing, origin, direction)
    new = P.resample_labels_to_reference(lab, ref, smooth=True).array
    np.testing.assert_array_equal(new, whole_box_paste(lab, ref))


def test_a_small_tumour_is_resampled_over_its_own_box_only(monkeypatch) -> None:
    sizes = []
    resample = P._resample_onto

    def counting(vol, size_ijk, *args):
        sizes.append(int(np.prod(size_ijk)))
        return resample(vol, size_ijk, *args)

    monkeypatch.setattr(P, "_resample_onto", counting)
    g = np.zeros((20, 30, 30), np.uint8)
    g[2:18, 3:27, 3:27] = 1
    g[9:11, 14:16, 14:16] = 2
    lab = Volume(g, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0))
    ref = Volume(np.zeros((60, 90, 90), np.int16), (0.5, 0.5, 0.5), (-0.5, -0.5, -0.5))
    out = P.resample_labels_to_reference(lab, ref, smooth=True).array
    assert (out == 2).sum() > 0 and len(sizes) == 2
    assert sizes[1] < sizes[0] / 100  # the tumour's box, not the liver's
