"""The web app object itself, in-process (no browser): busy guard, stale results, traversal
through the page's own state, save rollback, upload clean-up, command-line defaults.

Drives ``LiverWebApp`` the way the page does (state variables + controller
calls) on a small phantom with the deterministic threshold bundle. Needs the
``web`` extra; skipped without it unless ``LIVERCT_REQUIRE_BROWSER=1``.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.errors import OutputError
from LiverCTSegmentationLib.synthetic.phantom import make_phantom
from LiverCTSegmentationLib.web import app as app_mod
from LiverCTSegmentationLib.web import saving

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
_server_names = itertools.count()


def _need_trame_slicer() -> None:
    try:
        import trame_slicer  # noqa: F401
    except ImportError:
        if os.environ.get("LIVERCT_REQUIRE_BROWSER") == "1":
            pytest.fail("LIVERCT_REQUIRE_BROWSER=1 but the web extra (trame-slicer) is not installed", pytrace=False)
        pytest.skip("web extra (trame-slicer) not installed")


# ------------------------------------------------------------------ no trame needed
def test_parser_defaults_are_loopback_and_auto_device():
    args = app_mod.build_parser().parse_args([])
    assert args.host == "127.0.0.1"
    assert args.device == "auto"
    assert app_mod.build_parser().parse_args(["--device", "cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        app_mod.build_parser().parse_args(["--device", "gpu0"])


def test_write_outputs_removes_the_seg_nrrd_when_the_nifti_fails(tmp_path, monkeypatch):
    _, lab = make_phantom(2, shape_kji=(8, 24, 24), orientation="LPS", fov="full", n_lesions=0)
    out = {"seg_nrrd": tmp_path / "r.seg.nrrd", "nifti": tmp_path / "r.nii.gz"}
    labels = [{"value": 1, "name": "Liver", "color": [221, 130, 101]}]

    def disk_full(*_a, **_k):
        raise OutputError("Cannot write 'r.nii.gz': the disk is full.")

    monkeypatch.setattr(saving.io, "write_volume", disk_full)
    with pytest.raises(OutputError, match="disk is full"):
        saving.write_outputs(lab, labels, out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert saving.write_outputs(lab, labels, out) == [out["seg_nrrd"], out["nifti"]]


# ------------------------------------------------------------------ the app object
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    _need_trame_slicer()
    from bundle_fixtures import make_box_bundle

    base = tmp_path_factory.mktemp("webapp")
    data = base / "data"
    data.mkdir()
    ct_a, _ = make_phantom(3, shape_kji=(24, 64, 64), orientation="LPS", fov="full", n_lesions=0,
                           contrast="portal", noise=5)
    ct_b, _ = make_phantom(8, shape_kji=(24, 64, 64), orientation="LPS", fov="full", n_lesions=0,
                           contrast="portal", noise=5)
    io.write_volume(ct_a, data / "a.nii.gz")
    io.write_volume(ct_b, data / "b.nii.gz")
    io.write_volume(ct_b, base / "secret.nii.gz")  # outside the data folder: must never be read
    bundle = make_box_bundle(base / "bundle", liver_hu=(100.0, 175.0), two_stage=False)
    return {"base": base, "data": data, "bundle": bundle, "upload_bytes": (data / "b.nii.gz").read_bytes()}


@pytest.fixture(scope="module")
def web(world):
    from trame.app import get_server

    a = app_mod.LiverWebApp(get_server(f"liverseg-test-{next(_server_names)}", client_type="vue3"),
                            data_dir=world["data"], model=str(world["bundle"]), max_upload_mb=1, device="cpu")
    yield a
    a.uploads.cleanup()


@pytest.fixture()
def app(web):
    """The shared app with a.nii.gz freshly open and no message."""
    web.state.lw_selected = "a.nii.gz"
    web.server.controller.lw_open()
    assert web.state.lw_ct_name == "a.nii.gz" and not web.state.lw_error
    return web


def _upload(app, name: str, content: bytes) -> None:
    """What the page's file input sends: trame's file dict in state variable lw_upload."""
    app._on_upload(lw_upload={"name": name, "size": len(content), "type": "", "content": content})


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_open_upload_save_are_refused_while_running_and_a_stale_result_is_dropped(app, world, monkeypatch):
    from LiverCTSegmentationLib.engine import pipeline

    started, release = threading.Event(), threading.Event()
    real_segment = pipeline.segment

    def held_segment(*a, **k):
        started.set()
        assert release.wait(30), "test never released the run"
        return real_segment(*a, **k)

    monkeypatch.setattr(pipeline, "segment", held_segment)
    before = _files(world["base"])

    async def scenario() -> None:
        run = asyncio.ensure_future(app.run_segmentation())
        deadline = time.time() + 30
        while not started.is_set():
            assert time.time() < deadline and not run.done(), app.state.lw_error
            await asyncio.sleep(0.05)
        assert app.state.lw_busy

        app.state.lw_selected = "b.nii.gz"
        app.server.controller.lw_open()
        assert "segmentation is running" in app.state.lw_error and "opening" in app.state.lw_error
        assert app.state.lw_ct_name == "a.nii.gz"
        app.state.lw_error = ""
        _upload(app, "up.nii.gz", world["upload_bytes"])
        assert "segmentation is running" in app.state.lw_error and "uploading" in app.state.lw_error
        assert app.state.lw_ct_name == "a.nii.gz" and list(app.uploads.folder.iterdir()) == []
        app.state.lw_error = ""
        app.state.lw_out_name = "during_run"
        app.server.controller.lw_save()
        assert "segmentation is running" in app.state.lw_error and "saving" in app.state.lw_error
        # The page's busy flag is client-writable: clearing it must not lift the server's guard.
        app.state.lw_busy = False
        app.server.controller.lw_open()
        assert app.state.lw_ct_name == "a.nii.gz"

        # Second line of defence: a CT switch that got past the guard (as a future code path might).
        monkeypatch.setattr(app_mod, "refuse_while_busy", lambda *_a: None)
        app.open_ct(app.data.input_path("b.nii.gz"), "b.nii.gz")
        monkeypatch.setattr(app_mod, "refuse_while_busy", real_refuse)
        release.set()
        await asyncio.wait_for(run, 60)

    real_refuse = app_mod.refuse_while_busy
    asyncio.run(scenario())
    assert app.state.lw_ct_name == "b.nii.gz"
    assert "result was discarded" in app.state.lw_error
    assert app.state.lw_stats["liver_voxels"] == 0, "a's result landed in b's scene"
    assert not app.state.lw_busy and not app._busy
    assert _files(world["base"]) == before  # nothing saved, nothing uploaded into the data folder

    # Idle again: a run on the open CT goes through.
    asyncio.run(app.run_segmentation())
    assert not app.state.lw_error and app.state.lw_stats["liver_voxels"] > 1000


@pytest.mark.parametrize("bad", ["../secret.nii.gz", "sub/../../secret.nii.gz", "/etc/passwd",
                                 "~/secret.nii.gz", "a.nii.gz\x00.txt", "link.nii.gz"])
def test_traversal_through_the_selected_file_is_refused_and_shown(app, world, monkeypatch, bad):
    link = world["data"] / "link.nii.gz"
    if not link.is_symlink():
        link.symlink_to(world["base"] / "secret.nii.gz")
    reads: list[Path] = []
    real_read = io.read_volume
    monkeypatch.setattr(io, "read_volume", lambda p: reads.append(Path(p)) or real_read(p))
    app.state.lw_selected = bad
    app.server.controller.lw_open()
    assert "data folder" in app.state.lw_error
    assert app.state.lw_ct_name == "a.nii.gz"
    assert reads == []


@pytest.mark.parametrize("bad", ["../evil", "../../evil", "sub/evil", "/tmp/evil", "..", ".hidden"])
def test_traversal_through_the_output_name_is_refused_and_nothing_is_written(app, world, bad):
    before = _files(world["base"].parent)
    app.state.lw_out_name = bad
    app.server.controller.lw_save()
    assert "not a valid output name" in app.state.lw_error
    assert app.state.lw_saved == []
    assert _files(world["base"].parent) == before


def test_failed_nifti_write_leaves_no_orphan_and_a_retry_under_the_same_name_works(app, world, monkeypatch):
    def disk_full(*_a, **_k):
        raise OutputError("Cannot write 'retry.nii.gz': the disk is full. Free some space or write somewhere else.")

    monkeypatch.setattr(saving.io, "write_volume", disk_full)
    app.state.lw_out_name = "retry"
    app.server.controller.lw_save()
    assert "disk is full" in app.state.lw_error
    assert not (world["data"] / "retry.seg.nrrd").exists() and not (world["data"] / "retry.nii.gz").exists()
    monkeypatch.undo()
    app.server.controller.lw_save()
    assert not app.state.lw_error, app.state.lw_error
    assert app.state.lw_saved == ["retry.seg.nrrd", "retry.nii.gz"]
    nii = io.read_volume(world["data"] / "retry.nii.gz")
    assert nii.array.dtype == np.uint8 and nii.same_grid(io.read_volume(world["data"] / "a.nii.gz"))


def test_opening_another_ct_removes_the_previous_upload(app, world):
    folder = app.uploads.folder
    _upload(app, "first.nii.gz", world["upload_bytes"])
    assert app.state.lw_ct_name == "first.nii.gz", app.state.lw_error
    first = list(folder.iterdir())
    assert len(first) == 1
    _upload(app, "second.nii.gz", world["upload_bytes"])
    assert app.state.lw_ct_name == "second.nii.gz"
    second = list(folder.iterdir())
    assert len(second) == 1 and second != first
    # A broken upload fails, leaves the open CT (and its file) alone.
    _upload(app, "broken.nii.gz", b"not a nifti" * 10)
    assert "broken" in app.state.lw_error and app.state.lw_ct_name == "second.nii.gz"
    assert list(folder.iterdir()) == second
    app.state.lw_selected = "a.nii.gz"
    app.server.controller.lw_open()
    assert app.state.lw_ct_name == "a.nii.gz"
    assert list(folder.iterdir()) == []
