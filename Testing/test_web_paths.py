"""Path safety and upload handling of the web app (plain Python: no browser, no Slicer)."""
from __future__ import annotations

import os
import stat

import pytest

from LiverCTSegmentationLib.engine.errors import InputError, LiverSegError
from LiverCTSegmentationLib.web.safe_paths import DataFolder, OutputExistsError, PathNotAllowedError
from LiverCTSegmentationLib.web.uploads import UploadError, UploadStore, safe_upload_name


@pytest.fixture()
def tree(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "ct.nii.gz").write_bytes(b"x")
    (data / "sub" / "b.nrrd").write_bytes(b"x")
    (data / "notes.txt").write_text("x")
    secret = tmp_path / "secret.nii.gz"
    secret.write_bytes(b"s")
    return data, secret


@pytest.mark.parametrize("bad", [
    "../secret.nii.gz", "sub/../../secret.nii.gz", "..\\secret.nii.gz", "/etc/passwd", "~/x.nii.gz",
    "C:\\x.nii.gz", "ct.nii.gz\x00.txt", "", "   ",
])
def test_traversal_and_absolute_paths_are_refused(tree, bad):
    data, _ = tree
    with pytest.raises(PathNotAllowedError):
        DataFolder(data).input_path(bad)


def test_symlink_leading_out_is_refused_and_not_listed(tree):
    data, secret = tree
    os.symlink(secret, data / "link.nii.gz")
    folder = DataFolder(data)
    with pytest.raises(PathNotAllowedError, match="outside"):
        folder.input_path("link.nii.gz")
    assert "link.nii.gz" not in folder.list_cts()


def test_inside_paths_resolve_and_list(tree):
    data, _ = tree
    folder = DataFolder(data)
    assert folder.input_path("sub/b.nrrd") == (data / "sub" / "b.nrrd").resolve()
    assert folder.input_path("./ct.nii.gz") == (data / "ct.nii.gz").resolve()
    assert folder.list_cts() == ["ct.nii.gz", "sub/b.nrrd"]
    with pytest.raises(PathNotAllowedError, match="not a supported CT"):
        folder.input_path("notes.txt")
    with pytest.raises(InputError, match="not found"):
        folder.input_path("missing.nii.gz")


@pytest.mark.parametrize("bad", ["../out", "sub/out", "/tmp/out", "..", "", ".hidden", "a\x00b"])
def test_output_names_cannot_escape(tree, bad):
    data, _ = tree
    with pytest.raises(PathNotAllowedError):
        DataFolder(data).output_paths(bad)


def test_output_paths_never_overwrite(tree):
    data, _ = tree
    folder = DataFolder(data)
    out = folder.output_paths("result.seg.nrrd")  # suffix is stripped, both files derived from the stem
    assert out["seg_nrrd"] == data.resolve() / "result.seg.nrrd"
    assert out["nifti"] == data.resolve() / "result.nii.gz"
    (data / "result.nii.gz").write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="result.nii.gz"):
        folder.output_paths("result")
    assert (data / "result.nii.gz").read_bytes() == b"old"
    assert issubclass(OutputExistsError, LiverSegError)


def test_missing_data_folder_is_a_readable_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        DataFolder(tmp_path / "nope")


def test_upload_store_is_private_limited_and_sanitised():
    store = UploadStore(max_bytes=100)
    try:
        assert stat.S_IMODE(os.stat(store.folder).st_mode) == 0o700
        p = store.save("../../evil dir/ct scan.nii.gz", b"1234")
        assert p.parent == store.folder and p.name.endswith("ct_scan.nii.gz")
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        assert p.read_bytes() == b"1234"
        with pytest.raises(UploadError, match="upload limit"):
            store.save("big.nii.gz", b"x" * 101)
        with pytest.raises(UploadError, match="empty"):
            store.save("e.nii.gz", b"")
        with pytest.raises(UploadError, match="not a supported"):
            store.save("x.exe", b"12")
        assert len(list(store.folder.iterdir())) == 1  # refused uploads leave nothing behind
        store.discard(p)
        assert not p.exists()
    finally:
        store.cleanup()
    assert not store.folder.exists()


def test_safe_upload_name():
    assert safe_upload_name("..\\..\\a b.nii") == "a_b.nii"
    assert safe_upload_name("...") == "upload"
    assert "/" not in safe_upload_name("a/../../b.nrrd")


def test_cli_refuses_a_ct_outside_the_data_folder(tmp_path, capsys):
    from LiverCTSegmentationLib.web.app import main

    (tmp_path / "data").mkdir()
    outside = tmp_path / "other.nii.gz"
    outside.write_bytes(b"x")
    assert main([str(outside), "--data-dir", str(tmp_path / "data")]) == 2
    assert "not inside the data folder" in capsys.readouterr().err
