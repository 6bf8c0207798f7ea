"""Model bundles: round trip, SHA256, strict weights, validation, unsafe pickles and zips."""
from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from bundle_fixtures import make_box_bundle, make_tiny_bundle, tiny_description
from LiverCTSegmentationLib.engine.bundle import ModelBundle, load_bundle_zip, save_bundle, sha256_file
from LiverCTSegmentationLib.engine.errors import BundleError
from LiverCTSegmentationLib.engine.networks import build_network


def test_round_trip(tmp_path):
    folder = make_tiny_bundle(tmp_path / "b", two_stage=True, seed=3)
    mb = ModelBundle.load(folder)
    assert mb.name == "tiny-random-test" and mb.stage_names == ["coarse", "fine"]
    st = mb.stages["fine"]
    assert st.spacing == (1.5, 1.5, 1.5) and st.patch_size == (32, 32, 32) and st.class_to_label == [0, 1, 2]
    assert st.margin_mm == 10.0 and st.weights_path.name == "fine.safetensors"
    assert [l["value"] for l in mb.labels] == [1, 2]
    net = mb.network("coarse")
    assert not net.training
    torch.manual_seed(3)
    ref = build_network(tiny_description()["stages"]["coarse"]["architecture"]).state_dict()
    for k, v in net.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert mb.network("coarse") is net  # cached
    with pytest.raises(BundleError, match="no stage"):
        mb.network("middle")


def test_single_stage_bundle_is_valid(tmp_path):
    mb = ModelBundle.load(make_tiny_bundle(tmp_path / "b", two_stage=False))
    assert mb.stage_names == ["coarse"]


def test_save_refuses_non_empty_folder(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_text("x")
    desc = tiny_description(False)
    states = {"coarse": build_network(desc["stages"]["coarse"]["architecture"]).state_dict()}
    with pytest.raises(BundleError, match="not empty"):
        save_bundle(tmp_path / "b", desc, states)
    save_bundle(tmp_path / "b", desc, states, overwrite=True)


def test_save_refuses_mismatched_state(tmp_path):
    desc = tiny_description(False)
    other = build_network(dict(desc["stages"]["coarse"]["architecture"], channels=[4, 8, 32])).state_dict()
    with pytest.raises(BundleError, match="coarse"):
        save_bundle(tmp_path / "b", desc, {"coarse": other})
    assert not (tmp_path / "b" / "model.json").exists()


def test_wrong_sha256_refused(tmp_path):
    folder = make_tiny_bundle(tmp_path / "b")
    w = folder / "fine.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupted or has been tampered"):
        ModelBundle.load(folder)


def test_tamper_after_load_refused(tmp_path):
    folder = make_tiny_bundle(tmp_path / "b")
    mb = ModelBundle.load(folder)
    w = folder / "coarse.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="Re-download"):
        mb.network("coarse")


def _edit(folder: Path, fn):
    d = json.loads((folder / "model.json").read_text())
    fn(d)
    (folder / "model.json").write_text(json.dumps(d))


def test_description_weights_mismatch_refused_naming_stage(tmp_path):
    folder = make_tiny_bundle(tmp_path / "b")
    _edit(folder, lambda d: d["stages"]["fine"]["architecture"].update(channels=[4, 8, 32]))
    mb = ModelBundle.load(folder)  # hashes are fine; the architecture is not
    with pytest.raises(BundleError, match="stage 'fine'"):
        mb.network("fine")


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["labels"].append({"value": 1, "name": "dup"}), "used twice"),
    (lambda d: d["labels"].append({"value": 300, "name": "big"}), "1..255"),
    (lambda d: d["stages"]["coarse"].update(spacing=[3, -1, 3]), "positive"),
    (lambda d: d["stages"]["coarse"].update(class_to_label=[0, 1, 2]), "class_to_label"),
    (lambda d: d["stages"]["coarse"].update(class_to_label=[0, 7]), "declared label"),
    (lambda d: d["stages"]["coarse"].update(patch_size=[30, 32, 32]), "divisible"),
    (lambda d: d["stages"]["coarse"].update(weights="../evil.safetensors"), "plain file name"),
    (lambda d: d.pop("labels"), "'labels' is missing"),
    (lambda d: d["stages"].pop("coarse"), "coarse"),
    (lambda d: d.update(format_version=99), "not supported"),
    (lambda d: d["stages"]["coarse"]["architecture"].update(name="nope"), "unknown network"),
])
def test_validation_messages(tmp_path, edit, match):
    folder = make_tiny_bundle(tmp_path / "b")
    _edit(folder, edit)
    with pytest.raises(BundleError, match=match):
        ModelBundle.load(folder)


def test_missing_folder_and_bad_json(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        ModelBundle.load(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    with pytest.raises(BundleError, match="model.json is missing"):
        ModelBundle.load(tmp_path / "e")
    (tmp_path / "e" / "model.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        ModelBundle.load(tmp_path / "e")


def test_pt_weights_accepted(tmp_path):
    folder = make_box_bundle(tmp_path / "b", two_stage=False)
    mb = ModelBundle.load(folder)
    state = mb.network("coarse").state_dict()
    torch.save(state, folder / "coarse.pt")
    _edit(folder, lambda d: d["stages"]["coarse"].update(weights="coarse.pt", sha256=sha256_file(folder / "coarse.pt")))
    net = ModelBundle.load(folder).network("coarse")
    assert torch.equal(net.state_dict()["head.weight"], state["head.weight"])


class _Evil:
    """Pickle payload: unpickling would create a marker file."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_refused_without_side_effect(tmp_path):
    folder = make_box_bundle(tmp_path / "b", two_stage=False)
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = str(marker)
    with open(folder / "coarse.pt", "wb") as fh:
        pickle.dump({"head.weight": evil}, fh)
    # sanity: the payload really has the side effect when unpickled unsafely
    probe = tmp_path / "probe"
    evil.marker = str(probe)
    pickle.loads(pickle.dumps(evil))
    assert probe.exists()
    _edit(folder, lambda d: d["stages"]["coarse"].update(weights="coarse.pt", sha256=sha256_file(folder / "coarse.pt")))
    mb = ModelBundle.load(folder)  # the hash matches: the publisher signed a malicious file
    with pytest.raises(BundleError, match="refused without running"):
        mb.network("coarse")
    assert not marker.exists()


def _zip_bundle(folder: Path, zpath: Path, extra=None):
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"mybundle/{f.name}")
        if extra:
            extra(zf)
    return zpath


def test_zip_round_trip(tmp_path):
    folder = make_tiny_bundle(tmp_path / "b")
    z = _zip_bundle(folder, tmp_path / "b.zip")
    mb = load_bundle_zip(z, tmp_path / "out")
    assert mb.name == "tiny-random-test" and mb.path == tmp_path / "out" / "mybundle"


@pytest.mark.parametrize("name", ["../evil.txt", "mybundle/../../evil.txt", "/tmp/evil_abs_liverct.txt"])
def test_zip_traversal_refused(tmp_path, name):
    folder = make_tiny_bundle(tmp_path / "b")
    z = _zip_bundle(folder, tmp_path / "b.zip", lambda zf: zf.writestr(zipfile.ZipInfo(name), b"x"))
    with pytest.raises(BundleError, match="refused"):
        load_bundle_zip(z, tmp_path / "out" / "deep")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert not (tmp_path / "out" / "deep" / "mybundle").exists()  # nothing extracted at all


def test_zip_symlink_refused(tmp_path):
    folder = make_tiny_bundle(tmp_path / "b")

    def add_link(zf):
        info = zipfile.ZipInfo("mybundle/link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")

    z = _zip_bundle(folder, tmp_path / "b.zip", add_link)
    with pytest.raises(BundleError, match="symbolic link"):
        load_bundle_zip(z, tmp_path / "out")
