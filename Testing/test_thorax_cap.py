"""The thorax cap (synthetic/thorax_cap.py, ``data.synthetic.thorax``): a heart, lungs and mediastinum
added above the liver dome of an anatomy map, on the superior side whatever the array orientation,
the original voxels untouched, the heart a background class in training, and nothing changed when
the config key is absent."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")

from LiverCTSegmentationLib.engine import io  # noqa: E402
from LiverCTSegmentationLib.engine.volume import Volume  # noqa: E402
from LiverCTSegmentationLib.synthetic.anatomy_ct import (  # noqa: E402
    SynthesisParams, class_names, labels_on_grid, synthesize_ct, synthesize_volume,
)
from LiverCTSegmentationLib.synthetic.thorax_cap import (  # noqa: E402
    ThoraxParams, add_thorax_cap, add_thorax_cap_volume, patient_axes,
)

ANATOMY = Path(__file__).resolve().parents[2] / "shared" / "data" / "anatomy"
CLASSES = {"classes": {"0": "outside_body", "1": "liver", "2": "liver_tumor", "3": "body_unlabelled", "4": "bone",
                       "6": "vena_cava", "8": "artery", "11": "spleen", "12": "lung", "17": "liver_vessel"},
           "target": {"liver": [1, 17], "liver_tumor": [2]}}
NAMES = class_names(CLASSES)
SPACING_KJI = (2.0, 2.5, 2.5)
LIVER = (1, 2, 17)


def toy_map(shape=(30, 96, 112), liver_top: int = 28) -> np.ndarray:
    """[k superior, j posterior, i left] (LPS identity): a body, a liver on the patient's right whose
    left lobe reaches past the midline with its top at ``liver_top``, a spleen, the spine, aorta, cava."""
    k, j, i = np.indices(shape)
    lab = np.zeros(shape, np.uint8)
    lab[((i - 56) / 52.0) ** 2 + ((j - 48) / 40.0) ** 2 < 1] = 3
    right = ((i - 35) / 24.0) ** 2 + ((j - 46) / 22.0) ** 2 + ((k - liver_top + 15) / 16.0) ** 2 < 1
    left = ((i - 60) / 22.0) ** 2 + ((j - 38) / 12.0) ** 2 + ((k - liver_top + 7) / 8.0) ** 2 < 1
    lab[(right | left) & (k <= liver_top)] = 1
    lab[((i - 80) / 8.0) ** 2 + ((j - 60) / 10.0) ** 2 + ((k - 8) / 7.0) ** 2 < 1] = 11
    lab[((i - 56) / 6.0) ** 2 + ((j - 78) / 6.0) ** 2 < 1] = 4
    lab[((i - 50) / 3.0) ** 2 + ((j - 68) / 3.0) ** 2 < 1] = 8
    lab[(lab == 1) & (((i - 42) / 3.0) ** 2 + ((j - 62) / 3.0) ** 2 < 1)] = 17
    return lab


def names_by(names):
    return {n: v for v, n in names.items()}


def cap(lab=None, seed: int = 1, direction=np.eye(3), spacing=SPACING_KJI, params=ThoraxParams()):
    return add_thorax_cap(toy_map() if lab is None else lab, NAMES, spacing, direction, np.random.default_rng(seed),
                          params)


def test_the_cap_is_deterministic_for_a_seed_and_keeps_the_original_voxels():
    lab = toy_map()
    a, names, n = cap(lab, seed=1)
    b, _, _ = cap(lab, seed=1)
    c, _, _ = cap(lab, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    v = names_by(names)
    assert v["lung"] == 12 and v["heart"] == 18 and v["mediastinum"] == 19  # lung kept, new values after 17
    assert 40.0 <= n * SPACING_KJI[0] <= 92.0 and a.shape == (lab.shape[0] + n,) + lab.shape[1:]
    assert np.array_equal(a[: lab.shape[0]], lab)  # only slices added, on top
    new = a[lab.shape[0]:]
    for cls in ("heart", "lung", "mediastinum", "bone", "body_unlabelled"):
        assert (new == v[cls]).sum() > 50, cls
    assert not np.isin(new, LIVER).any()


def test_the_heart_rests_on_the_liver_left_of_the_midline_behind_a_thin_diaphragm():
    params = ThoraxParams()
    for seed in range(4):
        lab = toy_map()
        a, names, _ = cap(lab, seed=seed, params=params)
        heart = a == names_by(names)["heart"]
        liver = np.isin(a, LIVER)
        assert heart.any() and not (heart & liver).any()
        both = heart.any(axis=0) & liver.any(axis=0)
        assert both.sum() > 100  # the heart lies over the liver, not beside it
        k = np.arange(a.shape[0])[:, None, None]
        heart_low = np.where(heart, k, 10 ** 6).min(axis=0)[both]
        liver_top = np.where(liver, k, -1).max(axis=0)[both]
        gap_mm = (heart_low - liver_top - 1) * SPACING_KJI[0]
        assert gap_mm.min() >= params.diaphragm_mm[0]  # never on the liver
        assert gap_mm.min() <= params.diaphragm_mm[1] + SPACING_KJI[0]  # resting on it: a thin gap
        _, j, i = np.nonzero(heart)
        assert 56 + 4 < i.mean() < 56 + 25  # left of the spine (i grows to the patient's left)
        assert j.mean() < 78 - 10  # in front of the spine
        ml = heart.sum() * np.prod(SPACING_KJI) / 1000
        assert 120 < ml < 900


@pytest.mark.parametrize("case", ["k_flipped", "superior_along_i"])
def test_the_cap_goes_to_the_superior_side_whatever_the_array_orientation(case):
    """The same anatomy stored with the superior side at the low k index, or along i: the cap must
    hold the same labels at the same physical places, above the liver (fails if the side is wrong)."""
    lab = toy_map()
    ref = Volume(lab, SPACING_KJI[::-1], (-140.0, -120.0, 10.0), np.eye(3))
    if case == "k_flipped":
        arr = lab[::-1].copy()
        direction = np.diag([1.0, 1.0, -1.0])
        origin = ref.ijk_to_lps() @ np.array([0, 0, lab.shape[0] - 1, 1.0])
    else:  # array [k, j, i] = [left, posterior, superior]: i superior, k left
        arr = np.ascontiguousarray(np.transpose(lab, (2, 1, 0)))
        direction = np.array([[0.0, 0, 1], [0, 1, 0], [1, 0, 0]])
        origin = ref.ijk_to_lps()[:, 3]
    spacing_ijk = tuple(np.asarray(ref.spacing)[[2, 1, 0]]) if case == "superior_along_i" else ref.spacing
    vol = Volume(arr, spacing_ijk, tuple(origin[:3]), direction)
    assert patient_axes(direction)[2] == ((0, -1) if case == "k_flipped" else (2, 1))

    want, names, n_ref = add_thorax_cap_volume(ref, NAMES, np.random.default_rng(3))
    got, _, n = add_thorax_cap_volume(vol, NAMES, np.random.default_rng(3))
    assert n == n_ref > 0 and got.array.shape != vol.array.shape

    def physical(v: Volume, value: int) -> np.ndarray:
        kji = np.argwhere(v.array == value)
        ijk1 = np.c_[kji[:, ::-1], np.ones(len(kji))]
        return np.round((v.ijk_to_lps() @ ijk1.T)[:3].T, 3)

    heart = names_by(names)["heart"]
    for value in (heart, 1, 4):
        p, q = physical(want, value), physical(got, value)
        assert np.array_equal(p[np.lexsort(p.T)], q[np.lexsort(q.T)]), value
    assert physical(got, heart)[:, 2].min() > physical(got, 1)[:, 2].max()  # S is LPS +z: above the liver


def test_a_liver_touching_the_top_slice_is_returned_unchanged(caplog):
    lab = toy_map()
    lab[-1][lab[-2] == 1] = 1  # the liver reaches the map's top slice: the dome is cut
    with caplog.at_level(logging.INFO, logger="LiverCTSegmentationLib.synthetic.thorax_cap"):
        out, names, n = cap(lab)
    assert n == 0 and out is lab and "heart" in names.values()
    assert "touches the top slice" in caplog.text
    far, _, n_far = cap(toy_map(liver_top=20))  # 18 mm of map above the dome: the thorax is already there
    assert n_far == 0 and far.shape == lab.shape


def test_heart_hu_follows_its_prior_for_a_fixed_phase():
    a, names, n = cap(seed=0)
    a = a[-n:]  # the cap holds the whole heart: draw only it
    heart = a == names_by(names)["heart"]
    from scipy.ndimage import binary_erosion

    core = binary_erosion(heart, iterations=2)
    flat = dict(texture_hu=(0.0, 0.0), noise_hu=(0.0, 0.0), blur_mm=(0.0, 0.0))
    enhanced, plain = [], []
    for seed in range(4):
        plain.append(synthesize_ct(a, names, SPACING_KJI[::-1], seed, SynthesisParams(contrast_prob=0.0, **flat))[core])
        enhanced.append(synthesize_ct(a, names, SPACING_KJI[::-1], seed,
                                      SynthesisParams(contrast_prob=1.0, **flat))[core])
    for p, e in zip(plain, enhanced):
        assert 30 <= p.min() and p.max() <= 70  # blood pool without contrast
        assert 84 <= e.min() and e.max() <= 250  # 30-50 + 0.6-1.0 x 90-200
    assert np.mean([e.mean() for e in enhanced]) > 130  # a bright blood pool, not soft tissue


# ---------------------------------------------------------------- training cases
def write_root(root: Path, liver_top: int = 28) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "anatomy_classes.json").write_text(json.dumps(CLASSES))
    io.write_volume(Volume(toy_map(liver_top=liver_top), SPACING_KJI[::-1], (0.0, 0.0, 0.0), np.eye(3)),
                    root / "toy_anatomy.nii.gz")
    return root


def test_without_the_key_the_cases_are_those_of_before_and_with_it_a_new_folder(tmp_path):
    from liverct_training.anatomy_data import SYNTH_VERSION, synthetic_cases, variant_seed

    root = write_root(tmp_path / "anatomy")
    spec = {"root": str(root), "variants": 1, "grid_mm": 3.0}
    old_key = json.dumps({"v": SYNTH_VERSION, "seed": 0, "params": repr(SynthesisParams(grid_mm=3.0))},
                         sort_keys=True)
    old_folder = tmp_path / "cache" / "anatomy_synth" / hashlib.sha1(old_key.encode()).hexdigest()[:12]
    (case,) = synthetic_cases(spec, tmp_path / "cache", seed=0)
    assert Path(case.image_path).parent == old_folder and case.label_classes == str(root / "anatomy_classes.json")
    ct, labels = synthesize_volume(io.read_volume(root / "toy_anatomy.nii.gz"), NAMES, variant_seed(0, "toy", 0),
                                   SynthesisParams(grid_mm=3.0))
    assert np.array_equal(io.read_volume(case.image_path).array, ct.array)
    assert np.array_equal(io.read_volume(case.label_path).array, labels.array)

    (never,) = synthetic_cases(dict(spec, thorax={"prob": 0.0}), tmp_path / "cache", seed=0)
    assert Path(never.image_path).parent != old_folder  # the key changes the cache folder
    assert np.array_equal(io.read_volume(never.label_path).array, labels.array)  # prob 0: no cap
    (capped,) = synthetic_cases(dict(spec, thorax={"prob": 1.0, "cap_mm": [40, 60]}), tmp_path / "cache", seed=0)
    lab = io.read_volume(capped.label_path)
    assert Path(capped.image_path).parent not in (old_folder, Path(never.image_path).parent)
    assert 40 <= (lab.array.shape[0] - labels.array.shape[0]) * 3.0 <= 63 and (lab.array == 18).sum() > 10
    assert np.array_equal(lab.array[: labels.array.shape[0]], labels.array)


def test_heart_and_mediastinum_are_background_in_the_training_targets(tmp_path):
    from liverct_training.anatomy_data import synthetic_cases
    from liverct_training.datasets import load_case
    from liverct_training.sampling import label_lut

    root = write_root(tmp_path / "anatomy")
    spec = {"root": str(root), "variants": 1, "grid_mm": 3.0, "thorax": {"prob": 1.0}}
    (case,) = synthetic_cases(spec, tmp_path / "cache", seed=0)
    table = json.loads(Path(case.label_classes).read_text())
    assert table["classes"]["18"] == "heart" and table["target"] == CLASSES["target"]
    raw = io.read_volume(case.label_path).array
    _, mapped = load_case(case)  # the training loader: no LabelError for the new values
    for value in (18, 19, 12):  # heart, mediastinum, lung
        assert (raw == value).sum() > 10
        organ = np.unique(mapped.array[raw == value])
        assert len(organ) == 1 and organ[0] >= 3  # an organ (negative) value of its own
        for coarse in (False, True):
            assert label_lut([0, 1, 2], coarse)[organ[0]] == 0  # background in both stages' targets
    assert set(np.unique(mapped.array[raw == 1])) == {1}  # the liver still is the liver


@pytest.mark.skipif(not (ANATOMY / "anatomy_classes.json").is_file(), reason="../shared/data/anatomy absent")
def test_a_real_map_gets_a_heart_above_its_dome():
    names = class_names(json.loads((ANATOMY / "anatomy_classes.json").read_text()))
    vol = labels_on_grid(io.read_volume(ANATOMY / "ircad_p18_anatomy.nii.gz"), SynthesisParams(grid_mm=3.0))
    out, names, n = add_thorax_cap_volume(vol, names, np.random.default_rng(0))
    v = names_by(names)
    assert n > 0 and np.array_equal(out.array[: vol.array.shape[0]], vol.array)
    heart, liver = out.array == v["heart"], np.isin(out.array, [1, 2, 17, 18])
    k, _, i = np.nonzero(heart)
    lk, _, li = np.nonzero(liver)
    assert k.min() > lk.max() and i.mean() > li.mean()  # above the dome, left of the liver's centre
    assert 150 < heart.sum() * np.prod(out.spacing) / 1000 < 900
