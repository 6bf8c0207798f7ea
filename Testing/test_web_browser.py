"""End-to-end: the web app in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

One server (phantom CT + deterministic threshold bundle) and one page for the
module; tests run in file order (segment -> paint/undo -> save -> upload).
All traffic goes to 127.0.0.1; every wait is bounded; the server is killed at the end.
"""
from __future__ import annotations

import gzip
import io as _io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("LIVERCT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
LIVER_RGB = (221, 130, 101)


def _need_browser_stack():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"chromium not found at {CHROMIUM} (scripts/install_browser.sh installs it)")
    pytest.importorskip("playwright.sync_api", reason="playwright (python) not installed")
    pytest.importorskip("trame_slicer", reason="web extra (trame-slicer) not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def web_env(tmp_path_factory):
    _need_browser_stack()
    from bundle_fixtures import make_box_bundle

    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.engine.phantom import make_phantom

    tmp = tmp_path_factory.mktemp("web")
    data = tmp / "data"
    data.mkdir()
    ct, lab = make_phantom(3, shape_kji=(40, 96, 96), orientation="LPS", fov="full", n_lesions=0,
                           contrast="portal", noise=5)
    io.write_volume(ct, data / "phantom.nii.gz")
    bundle = make_box_bundle(tmp / "bundle", liver_hu=(100.0, 175.0), two_stage=False)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow",
               PYTHONPATH=os.pathsep.join([str(ROOT / "LiverCTSegmentation"), os.environ.get("PYTHONPATH", "")]))
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "LiverCTSegmentationLib.web.app", "phantom.nii.gz",
                             "--data-dir", str(data), "--model", str(bundle), "--port", str(port),
                             "--max-upload-mb", "1"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while not _http_ok(url):
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail("web server did not start:\n" + (tmp / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {"url": url, "data": data, "ct": ct, "label": lab, "proc": proc, "tmp": tmp}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def page(web_env):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 850})
            pg.set_default_timeout(30_000)
            pg.goto(web_env["url"])
            pg.wait_for_selector("[data-testid=lw-panel]")
            pg.wait_for_function("() => document.querySelectorAll('img.image-display-area').length >= 4")
            yield pg
        finally:
            browser.close()


# ------------------------------------------------------------------ helpers
def _voxels(pg) -> int:
    return int(pg.inner_text("[data-testid=lw-liver-voxels]"))


def _wait_voxels(pg, predicate: str, timeout_ms: int = 30_000) -> int:
    pg.wait_for_function(
        f"() => {{ const v = +document.querySelector('[data-testid=lw-liver-voxels]').textContent; return {predicate}; }}",
        timeout=timeout_ms)
    return _voxels(pg)


def _view_pixels(pg, index: int) -> np.ndarray:
    """RGB pixels of one view as rendered in the page (views in DOM order: axial, 3D, coronal, sagittal)."""
    from PIL import Image

    png = pg.locator("img.image-display-area").nth(index).screenshot()
    return np.asarray(Image.open(_io.BytesIO(png)).convert("RGB")).astype(int)


def _liver_coloured(rgb: np.ndarray) -> np.ndarray:
    """Liver's orange, alone or blended with grey CT (grey has r == g == b; the tumour colour is green)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r - b > 35) & (r - g > 20)


def _poll(fn, timeout_s: float = 20.0, every: float = 0.5):
    deadline = time.time() + timeout_s
    while True:
        value = fn()
        if value is not None or time.time() > deadline:
            return value
        time.sleep(every)


def _stroke(pg, x0: float, x1: float, y: float) -> None:
    box = pg.locator("img.image-display-area").nth(0).bounding_box()
    # Pauses let the server-side interactor see hover, press and each move as separate events.
    pg.mouse.move(box["x"] + x0 * box["width"], box["y"] + y * box["height"])
    time.sleep(0.3)
    pg.mouse.down()
    for t in np.linspace(0, 1, 10):
        pg.mouse.move(box["x"] + (x0 + t * (x1 - x0)) * box["width"], box["y"] + y * box["height"])
        time.sleep(0.1)
    pg.mouse.up()


# ------------------------------------------------------------------ tests
def test_segment_then_liver_shows_in_axial_and_3d(page, web_env):
    assert "phantom.nii.gz" in page.inner_text("[data-testid=lw-ct-name]")
    assert _voxels(page) == 0
    page.click("[data-testid=lw-run]")
    n = _wait_voxels(page, "v > 0", 90_000)
    assert n > 1000
    assert float(page.inner_text("[data-testid=lw-liver-ml]")) > 0

    axial = _poll(lambda: (lambda px: px if _liver_coloured(px).sum() > 200 else None)(_view_pixels(page, 0)))
    assert axial is not None, "liver colour never appeared in the axial view"
    # Where the phantom's liver is: patient right, i.e. low i on an LPS grid, which Slicer shows on screen left.
    lab = web_env["label"].array
    ii = np.nonzero(lab == 1)[2]
    expect_left = ii.mean() < lab.shape[2] / 2
    cols = np.nonzero(_liver_coloured(axial))[1]
    assert (cols.mean() < axial.shape[1] / 2) == expect_left

    three_d = _poll(lambda: (lambda px: px if _liver_coloured(px).mean() > 0.01 else None)(_view_pixels(page, 1)))
    assert three_d is not None, "3D view shows no liver surface"
    assert three_d.std() > 10  # not a blank background


def test_paint_grows_liver_and_undo_restores(page):
    before = _voxels(page)
    version = int(page.inner_text("[data-testid=lw-stats-version]"))
    # Paint effect button in the segment editor drawer (left of the views).
    page.evaluate("""() => { const b = Array.from(document.querySelectorAll('button'))
        .filter(b => b.querySelector('.mdi-brush') && b.getBoundingClientRect().x < 340); b[0].click(); }""")
    time.sleep(1.0)
    _stroke(page, 0.05, 0.35, 0.10)  # air above the body: certainly not liver yet
    after = _wait_voxels(page, f"v > {before}")
    assert int(page.inner_text("[data-testid=lw-stats-version]")) > version
    page.locator("button:has(.mdi-undo)").click()
    assert _wait_voxels(page, f"v === {before}") == before


def test_save_writes_the_edited_segmentation_on_the_ct_grid(page, web_env):
    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.engine.segfile import read_seg_nrrd

    before = _voxels(page)
    _stroke(page, 0.05, 0.35, 0.10)
    edited = _wait_voxels(page, f"v > {before}")
    page.fill("[data-testid=lw-out-name] input", "edited")
    page.click("[data-testid=lw-save]")
    page.wait_for_function("() => document.querySelector('[data-testid=lw-saved]').textContent.includes('edited')")
    data = web_env["data"]
    nii = io.read_volume(data / "edited.nii.gz")
    assert nii.array.dtype == np.uint8
    assert nii.same_grid(web_env["ct"])
    assert int(np.count_nonzero(nii.array == 1)) == edited
    seg, labels = read_seg_nrrd(data / "edited.seg.nrrd")
    assert seg.same_grid(web_env["ct"])
    assert np.array_equal(np.asarray(seg.array), nii.array)
    assert [d["name"] for d in labels][:1] == ["Liver"]
    # Saving again must not overwrite silently.
    stamp = (data / "edited.nii.gz").stat().st_mtime_ns
    page.click("[data-testid=lw-save]")
    page.wait_for_selector("[data-testid=lw-error]")
    assert "already exist" in page.inner_text("[data-testid=lw-error]")
    assert (data / "edited.nii.gz").stat().st_mtime_ns == stamp


def test_broken_or_oversized_upload_shows_error_and_server_keeps_serving(page, web_env):
    tmp = web_env["tmp"]
    broken = tmp / "broken.nii.gz"
    broken.write_bytes(gzip.compress(b"this is not a NIfTI file" * 20))
    page.set_input_files("[data-testid=lw-upload] input[type=file]", str(broken))
    page.wait_for_function("() => { const e = document.querySelector('[data-testid=lw-error]');"
                           " return e && /broken/.test(e.textContent) }")
    msg = page.inner_text("[data-testid=lw-error]")
    assert "Traceback" not in msg and len(msg) > 20
    big = tmp / "big.nii.gz"
    big.write_bytes(b"\0" * (1024 * 1024 + 10))
    page.set_input_files("[data-testid=lw-upload] input[type=file]", str(big))
    page.wait_for_function("() => /upload limit/.test(document.querySelector('[data-testid=lw-error]').textContent)")
    # Still serving, still showing the CT it had.
    assert web_env["proc"].poll() is None
    assert _http_ok(web_env["url"])
    assert "phantom.nii.gz" in page.inner_text("[data-testid=lw-ct-name]")
    assert _voxels(page) > 0
