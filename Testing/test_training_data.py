"""Dataset readers, label mapping, patient-level splits and the preprocessing cache."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from liverct_training import cache as C
from liverct_training import datasets as D
from liverct_training import labels as L
from liverct_training import split as S


def write_nii(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))
    return path


def tiny_pair(rng, shape=(8, 10, 12), tumor=True):
    ct = rng.integers(-100, 200, size=shape).astype(np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 3:8, 3:9] = 1
    if tumor:
        lab[3:5, 4:6, 4:6] = 2
    return ct, lab


# ------------------------------------------------------------------ labels
def test_label_mappings():
    a = np.array([0, 1, 2, 2, 1], np.uint8)
    assert L.apply_mapping(a, L.mapping_for("liver_tumor")).tolist() == [0, 1, 2, 2, 1]
    assert L.apply_mapping(a, L.mapping_for("liver")).tolist() == [0, 1, 1, 1, 1]
    assert L.apply_mapping(np.array([0, 1]), L.mapping_for("lung_tumor")).tolist() == [0, 1]
    assert L.apply_mapping(a, L.mapping_for("liver", {"1": "1", "2": "0"})).tolist() == [0, 1, 0, 0, 1]


def test_unexpected_label_values_name_file_and_values():
    with pytest.raises(L.LabelError) as e:
        L.apply_mapping(np.array([0, 1, 2, 7]), L.mapping_for("lung_tumor"), source="/data/x_seg.nii.gz")
    msg = str(e.value)
    assert "/data/x_seg.nii.gz" in msg and "[2, 7]" in msg
    with pytest.raises(L.LabelError, match="non-integer"):
        L.apply_mapping(np.array([0.0, 0.5]), L.mapping_for("liver"), source="f")
    with pytest.raises(L.LabelError, match="unknown task"):
        L.mapping_for("kidney")


def test_multiorgan_mapping(tmp_path):
    classes = {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "4": "gallbladder", "5": "liver",
               "6": "stomach", "7": "aorta", "8": "femur_left"}
    p = tmp_path / "classes.json"
    p.write_text(json.dumps(classes))
    mapping, names = L.multiorgan_mapping(p)
    assert mapping[5] == 1 and mapping[0] == 0
    assert mapping[2] == mapping[3] and names[mapping[2]] == "kidney"  # both kidneys one class
    assert names[mapping[1]] == "spleen" and names[mapping[6]] == "stomach"
    assert mapping[8] == 0  # not a negative class -> background
    assert len({mapping[i] for i in (1, 2, 4, 6, 7)}) == 5  # distinct negative classes
    bg, _ = L.multiorgan_mapping({"spleen": 1, "liver": 5}, negatives_as_background=True)
    assert bg == {0: 0, 1: 0, 5: 1}
    arr = np.array([0, 5, 1, 3])
    assert L.apply_mapping(arr, mapping).tolist() == [0, 1, mapping[1], mapping[3]]
    with pytest.raises(L.LabelError):
        L.apply_mapping(np.array([0, 99]), mapping)


# ------------------------------------------------------------------ readers
def test_read_lits(tmp_path):
    rng = np.random.default_rng(0)
    for n, batch in ((10, "Training Batch 2"), (2, "Training Batch 1"), (0, "Training Batch 1")):
        ct, lab = tiny_pair(rng)
        write_nii(tmp_path / batch / f"volume-{n}.nii", ct)
        write_nii(tmp_path / batch / f"segmentation-{n}.nii", lab)
    cases = D.read_lits(tmp_path)
    assert [c.case_id for c in cases] == ["lits-000", "lits-002", "lits-010"]
    assert cases[2].image_path.endswith("volume-10.nii") and cases[2].label_path.endswith("segmentation-10.nii")
    os.remove(tmp_path / "Training Batch 1" / "segmentation-2.nii")
    with pytest.raises(D.DatasetError, match=r"\[2\]"):
        D.read_lits(tmp_path)


def test_read_msd(tmp_path):
    rng = np.random.default_rng(1)
    training = []
    for name in ("liver_3", "liver_1", "liver_20"):
        ct, lab = tiny_pair(rng)
        write_nii(tmp_path / "imagesTr" / f"{name}.nii.gz", ct)
        write_nii(tmp_path / "labelsTr" / f"{name}.nii.gz", lab)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "Liver", "training": training, "test": []}))
    cases = D.read_msd(tmp_path)
    assert [c.case_id for c in cases] == ["liver_1", "liver_3", "liver_20"]
    assert all(Path(c.label_path).is_file() for c in cases)
    # case loads with the task mapping (Task06 lung: 0/1)
    ct, lab = D.load_case(cases[0], "liver")
    assert ct.same_grid(lab) and set(np.unique(lab.array)) <= {0, 1}
    with pytest.raises(L.LabelError, match="liver_1"):
        D.load_case(cases[0], "lung_tumor")  # value 2 is unexpected for lung
    (tmp_path / "dataset.json").unlink()
    with pytest.raises(D.DatasetError, match="dataset.json"):
        D.read_msd(tmp_path)


def test_read_generic_and_list(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("pat2_scan1", "pat1_scan1", "pat1_scan2"):
        ct, lab = tiny_pair(rng)
        write_nii(tmp_path / "images" / f"{name}.nii.gz", ct)
        write_nii(tmp_path / "labels" / f"{name}_seg.nii.gz", lab)
    cases = D.read_generic(tmp_path, patient_regex=r"^(pat\d+)")
    assert [c.case_id for c in cases] == ["pat1_scan1", "pat1_scan2", "pat2_scan1"]
    assert [c.patient_id for c in cases] == ["pat1", "pat1", "pat2"]
    via_cfg = D.read_dataset({"kind": "generic", "root": str(tmp_path)})
    assert [c.case_id for c in via_cfg] == [c.case_id for c in cases]
    pairs = D.read_dataset({"kind": "pairs", "pairs": [
        f"{cases[0].image_path}:{cases[0].label_path}",
        {"image": cases[2].image_path, "label": cases[2].label_path, "case_id": "x", "patient_id": "p9"}]})
    assert [(c.case_id, c.patient_id) for c in pairs] == [("pat1_scan1", "pat1_scan1"), ("x", "p9")]
    write_nii(tmp_path / "images" / "orphan.nii.gz", rng.integers(0, 5, (8, 10, 12)).astype(np.int16))
    with pytest.raises(D.DatasetError, match="orphan"):
        D.read_generic(tmp_path)
    with pytest.raises(D.DatasetError, match="unknown data.kind"):
        D.read_dataset({"kind": "nope", "root": str(tmp_path)})


def test_load_case_label_header_rounding_takes_ct_geometry(tmp_path):
    """A label whose header differs by float noise (nibabel vs ITK writes) gets the CT grid."""
    rng = np.random.default_rng(3)
    ct, lab = tiny_pair(rng)
    write_nii(tmp_path / "images" / "a.nii.gz", ct, spacing=(0.8, 0.8, 2.5), origin=(10.0, -5.0, 3.0))
    # write the label with nibabel with a slightly different affine (1e-5 mm noise)
    aff = np.diag([-0.8, -0.8, 2.5, 1.0])
    aff[:3, 3] = [-10.00001, 5.0, 3.0]
    (tmp_path / "labels").mkdir()
    nib.save(nib.Nifti1Image(np.transpose(lab, (2, 1, 0)), aff), str(tmp_path / "labels" / "a.nii.gz"))
    case = D.read_generic(tmp_path)[0]
    ctv, labv = D.load_case(case, "liver_tumor")
    assert ctv.same_grid(labv)
    np.testing.assert_array_equal(labv.array, lab)


# ------------------------------------------------------------------ split
def fake_cases(n_patients=20, scans=2):
    return [D.Case(f"p{p:02d}_s{s}", f"p{p:02d}", f"/x/p{p}_{s}.nii.gz", f"/x/p{p}_{s}_seg.nii.gz")
            for p in range(n_patients) for s in range(scans)]


def test_split_patient_level_seeded_and_sorted(tmp_path):
    cases = fake_cases()
    s1 = S.make_split(cases, seed=3, fractions=(0.6, 0.2, 0.2))
    s2 = S.make_split(list(reversed(cases)), seed=3, fractions=(0.6, 0.2, 0.2))
    for sub in S.SUBSETS:
        assert s1[sub] == s2[sub] == sorted(s1[sub])  # order-independent and sorted
    assert [len(s1[s]) for s in S.SUBSETS] == [24, 8, 8]
    pid = {c.case_id: c.patient_id for c in cases}
    sets = {s: {pid[i] for i in s1[s]} for s in S.SUBSETS}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert S.make_split(cases, seed=4)["test"] != s1["test"]


def test_split_reused_never_reshuffled(tmp_path):
    cases = fake_cases()
    p = tmp_path / "split.json"
    first = S.load_or_create_split(p, cases, seed=1)
    again = S.load_or_create_split(p, list(reversed(cases)), seed=1)
    assert again["test"] == first["test"] and again["created"] == first["created"]
    more = cases + [D.Case("p99_s0", "p99", "/x/a", "/x/b")]
    with pytest.raises(S.SplitError, match="p99_s0"):
        S.load_or_create_split(p, more, seed=1)
    with pytest.raises(S.SplitError, match="seed"):
        S.load_or_create_split(p, cases, seed=2)
    forced = S.load_or_create_split(p, more, seed=1, force=True)
    assert "p99_s0" in forced["cases"]
    assert json.loads(p.read_text())["cases"].keys() == forced["cases"].keys()


def test_train_val_cases_exclude_test(tmp_path):
    cases = fake_cases(10, 1)
    sp = S.make_split(cases, seed=0)
    tr, va = S.train_val_cases(sp)
    test_ids = set(sp["test"])
    assert test_ids and not ({c.case_id for c in tr + va} & test_ids)
    assert {c.case_id for c in S.subset_cases(sp, "all")} == {c.case_id for c in cases}
    with pytest.raises(S.SplitError):
        S.subset_cases(sp, "holdout")


def test_main_split_with_config(tmp_path):
    rng = np.random.default_rng(5)
    for i in range(6):
        ct, lab = tiny_pair(rng)
        write_nii(tmp_path / "data" / "images" / f"c{i}.nii.gz", ct)
        write_nii(tmp_path / "data" / "labels" / f"c{i}.nii.gz", lab)
    out = tmp_path / "split.json"
    assert S.main_split(["--kind", "generic", "--root", str(tmp_path / "data"), "--out", str(out), "--seed", "7"]) == 0
    sp = json.loads(out.read_text())
    assert sum(len(sp[s]) for s in S.SUBSETS) == 6 and sp["seed"] == 7
    # changed data -> error (exit 2), nothing rewritten
    os.remove(tmp_path / "data" / "images" / "c5.nii.gz")
    os.remove(tmp_path / "data" / "labels" / "c5.nii.gz")
    before = out.read_text()
    assert S.main_split(["--kind", "generic", "--root", str(tmp_path / "data"), "--out", str(out), "--seed", "7"]) == 2
    assert out.read_text() == before


# ------------------------------------------------------------------ cache
STAGE = {"spacing": [2.0, 2.0, 4.0], "intensity": {"clip": [-200.0, 300.0], "mean": 50.0, "std": 125.0}}


def test_cache_build_load_and_keying(tmp_path):
    from LiverCTSegmentationLib.engine import preprocess
    from LiverCTSegmentationLib.engine.volume import Volume

    rng = np.random.default_rng(6)
    ct, lab = tiny_pair(rng, shape=(10, 16, 20))
    img_p = write_nii(tmp_path / "images" / "a.nii.gz", ct, spacing=(1.0, 1.0, 2.0))
    write_nii(tmp_path / "labels" / "a.nii.gz", lab, spacing=(1.0, 1.0, 2.0))
    case = D.read_generic(tmp_path)[0]
    cdir = tmp_path / "cache"
    cc = C.load_cached(case, STAGE, cdir, task="liver_tumor")
    assert cc.image.dtype == np.float16 and cc.label.dtype == np.uint8
    assert cc.image.shape == cc.label.shape == (5, 8, 10)
    assert tuple(cc.spacing) == (2.0, 2.0, 4.0)
    # same numbers as the engine's own functions (one source of truth)
    vol = Volume(ct, (1.0, 1.0, 2.0))
    ref = preprocess.normalise(preprocess.resample_to_spacing(vol, STAGE["spacing"], "linear").array, STAGE["intensity"])
    np.testing.assert_allclose(cc.image.astype(np.float32), ref, atol=2e-3 * max(1.0, float(np.abs(ref).max())))
    # index lists point at foreground / tumour voxels
    flat = np.asarray(cc.label).ravel()
    assert np.all(flat[cc.fg_indices] > 0) and cc.fg_indices.size == np.count_nonzero(flat)
    assert np.all(flat[cc.tumor_indices] == 2) and cc.tumor_indices.size == np.count_nonzero(flat == 2)
    assert cc.meta["fg_bbox_kji"] is not None
    entries = [d for d in cdir.iterdir() if d.is_dir()]
    assert len(entries) == 1 and not list(cdir.glob(".*tmp*"))
    # second load reuses (no rebuild), liver task maps tumour into liver: new key
    mtime = (entries[0] / "image.npy").stat().st_mtime_ns
    C.load_cached(case, STAGE, cdir, task="liver_tumor")
    assert (entries[0] / "image.npy").stat().st_mtime_ns == mtime
    cl = C.load_cached(case, STAGE, cdir, task="liver")
    assert cl.path != cc.path and cl.tumor_indices.size == 0 and set(np.unique(cl.label)) <= {0, 1}
    # different spacing / intensity -> different key
    k1 = C.cache_key(case, STAGE, L.mapping_for("liver_tumor"))[0]
    k2 = C.cache_key(case, {**STAGE, "spacing": [3.0, 3.0, 3.0]}, L.mapping_for("liver_tumor"))[0]
    k3 = C.cache_key(case, {**STAGE, "intensity": {"clip": [-100, 200], "mean": 0, "std": 1}},
                     L.mapping_for("liver_tumor"))[0]
    assert len({k1, k2, k3}) == 3
    # a touched input file invalidates the entry
    time.sleep(0.01)
    os.utime(img_p, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    assert C.cache_key(case, STAGE, L.mapping_for("liver_tumor"))[0] != k1
    # content hashing mode keys on SHA256 (mtime irrelevant)
    h1 = C.cache_key(case, STAGE, L.mapping_for("liver_tumor"), hash_files=True)
    assert h1[1]["image"]["sha256"] == C.sha256_file(img_p)
    with pytest.raises(FileNotFoundError):
        C.load_cached(case, {**STAGE, "spacing": [5.0, 5.0, 5.0]}, cdir, build=False)


def test_cache_label_on_same_grid_as_image_for_oblique(tmp_path):
    from LiverCTSegmentationLib.engine.volume import Volume
    from LiverCTSegmentationLib.engine.io import write_volume

    rng = np.random.default_rng(7)
    ct, lab = tiny_pair(rng, shape=(12, 16, 16))
    th = np.deg2rad(10)
    d = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    write_volume(Volume(ct, (1.0, 1.0, 2.0), (5.0, 5.0, 5.0), d), tmp_path / "images" / "o.nii.gz")
    write_volume(Volume(lab, (1.0, 1.0, 2.0), (5.0, 5.0, 5.0), d), tmp_path / "labels" / "o.nii.gz")
    case = D.read_generic(tmp_path)[0]
    cc = C.load_cached(case, STAGE, tmp_path / "cache")
    assert cc.image.shape == cc.label.shape
    assert np.allclose(cc.meta["direction"], d, atol=1e-6)
    assert np.count_nonzero(cc.label) > 0
