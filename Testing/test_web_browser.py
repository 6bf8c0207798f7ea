"""End-to-end: the web app in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

One server (phantom CT + deterministic threshold bundle) and one page for the
module; tests run in file order (segment -> paint/undo -> save -> bad uploads
-> good upload -> open from the list). All traffic goes to 127.0.0.1; every
wait is bounded; the server is killed at the end. Without chromium, playwright
or trame-slicer the tests skip, or fail when ``LIVERCT_REQUIRE_BROWSER=1`` (CI).
"""
from __future__ import annotations

import gzip
import importlib
import io as _io
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from scipy import ndimage
from local_ports import free_port

CHROMIUM = os.environ.get("LIVERCT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
LIVER_RGB = (221, 130, 101)


def _missing_browser_stack() -> Optional[str]:
    """Why the browser tests cannot run here, or None."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"chromium not found at {CHROMIUM} (scripts/install_browser.sh installs it)"
    for module, what in (("playwright.sync_api", "playwright (python)"),
                         ("trame_slicer", "the web extra (trame-slicer)")):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{what} not installed (scripts/install_browser.sh installs it)"
    return None


def _need_browser_stack() -> None:
    """Skip with the reason; CI sets LIVERCT_REQUIRE_BROWSER=1 so a broken install fails instead."""
    missing = _missing_browser_stack()
    if missing is None:
        return
    if os.environ.get("LIVERCT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"LIVERCT_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
    pytest.skip(missing)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _printed_url(log: Path, port: int) -> Optional[str]:
    """The URL with the session's secret that the app prints once it listens."""
    m = re.search(rf"http://127\.0\.0\.1:{port}/\?secret=[A-Za-z0-9_-]+", log.read_text())
    return m.group(0) if m else None


@pytest.fixture(scope="module")
def web_env(tmp_path_factory):
    _need_browser_stack()
    from bundle_fixtures import make_box_bundle

    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom

    tmp = tmp_path_factory.mktemp("web")
    data = tmp / "data"
    data.mkdir()
    ct, lab = make_phantom(3, shape_kji=(40, 96, 96), orientation="LPS", fov="full", n_lesions=0,
                           contrast="portal", noise=5)
    io.write_volume(ct, data / "phantom.nii.gz")
    small, _ = make_phantom(6, shape_kji=(16, 48, 48), orientation="LPS", fov="full", n_lesions=0, noise=5)
    io.write_volume(small, data / "phantom2.nii.gz")  # second CT to pick from the list
    io.write_volume(small, tmp / "small_upload.nii.gz")  # valid upload, under the 1 MB limit
    bundle = make_box_bundle(tmp / "bundle", liver_hu=(100.0, 175.0), two_stage=False)
    port = free_port()
    server_tmp = tmp / "server_tmp"  # the server's private upload folder lands here, so tests can look in
    server_tmp.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow", TMPDIR=str(server_tmp),
               PYTHONPATH=os.pathsep.join([str(ROOT / "LiverCTSegmentation"), os.environ.get("PYTHONPATH", "")]))
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "LiverCTSegmentationLib.web.app", "phantom.nii.gz",
                             "--data-dir", str(data), "--model", str(bundle), "--port", str(port),
                             "--max-upload-mb", "1"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        deadline = time.time() + 90
        # The page needs the per-launch secret: open the very URL the app prints, as a user would.
        while not ((url := _printed_url(tmp / "server.log", port)) and _http_ok(url)):
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail("web server did not start:\n" + (tmp / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield {"url": url, "data": data, "ct": ct, "label": lab, "proc": proc, "tmp": tmp, "bundle": bundle,
               "server_tmp": server_tmp}
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


def _screen_mask(mask_ji: np.ndarray, shape_hw: tuple[int, int], scale: float) -> np.ndarray:
    """Voxel mask of an axial (k) slice -> where it lies in the axial view's pixels.

    Slicer centres the volume in a slice view and keeps pixels square; for our
    LPS grid the view's x follows i (patient left on screen right) and y follows j.
    """
    h, w = shape_hw
    nj, ni = mask_ji.shape
    yy, xx = np.mgrid[0:h, 0:w]
    i = np.rint((xx + 0.5 - w / 2) / scale + (ni - 1) / 2).astype(int)
    j = np.rint((yy + 0.5 - h / 2) / scale + (nj - 1) / 2).astype(int)
    inside = (i >= 0) & (i < ni) & (j >= 0) & (j < nj)
    out = np.zeros((h, w), bool)
    out[inside] = mask_ji[j[inside], i[inside]]
    return out


def _axial_scale(rgb: np.ndarray, ct_slice: np.ndarray) -> float:
    """Pixels per voxel, from the body's anterior edge (its top row on screen) and the view's centre."""
    h = rgb.shape[0]
    bright_rows = np.nonzero((rgb.max(axis=2)[40:h - 40] > 40).sum(axis=1) > 10)[0] + 40  # skip icons, slider
    top_j = np.nonzero((ct_slice > -500).any(axis=1))[0][0]
    return (h / 2 - bright_rows[0]) / ((ct_slice.shape[0] - 1) / 2 - top_j + 0.5)


# JS run in the page before "Run segmentation": every DOM change (MutationObserver) records
# whether the progress bar was visible, the highest value it showed, and the stage captions.
_WATCH_PROGRESS = """() => {
  const seen = window.__lwProgress = {visible: false, max: -1, stages: []};
  const look = () => {
    const bar = document.querySelector('[data-testid=lw-progress]');
    if (bar && bar.offsetParent !== null && getComputedStyle(bar).display !== 'none') {
      seen.visible = true;
      seen.max = Math.max(seen.max, +(bar.getAttribute('aria-valuenow') || 0));
    }
    const stage = (document.querySelector('[data-testid=lw-stage]') || {}).textContent || '';
    if (stage.trim() && !seen.stages.includes(stage.trim())) seen.stages.push(stage.trim());
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                      characterData: true});
}"""


def _upload_folder_files(web_env) -> list[Path]:
    return [p for d in web_env["server_tmp"].glob("liverseg-web-upload-*") for p in d.iterdir()]


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
def test_require_flag_turns_missing_browser_into_a_failure(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("LIVERCT_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium not found"):
        _need_browser_stack()
    monkeypatch.setenv("LIVERCT_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="LIVERCT_REQUIRE_BROWSER=1 but chromium not found"):
        _need_browser_stack()


def test_segment_shows_progress_then_liver_in_axial_and_3d(page, web_env):
    assert "phantom.nii.gz" in page.inner_text("[data-testid=lw-ct-name]")
    assert _voxels(page) == 0
    page.evaluate(_WATCH_PROGRESS)
    page.click("[data-testid=lw-run]")
    n = _wait_voxels(page, "v > 0", 90_000)
    assert n > 1000
    assert float(page.inner_text("[data-testid=lw-liver-ml]")) > 0
    seen = page.evaluate("() => window.__lwProgress")
    assert seen["visible"], "the progress bar never showed during the run"
    assert seen["max"] > 0, seen
    assert any(s.endswith("%") for s in seen["stages"]), seen  # "<stage> NN%" caption while busy
    assert not page.locator("[data-testid=lw-progress]").is_visible()  # hidden again when done

    axial = _poll(lambda: (lambda px: px if _liver_coloured(px).sum() > 200 else None)(_view_pixels(page, 0)))
    assert axial is not None, "liver colour never appeared in the axial view"
    # Map the phantom onto the view (centre of volume at centre of view, scale from the body's edge) and
    # check the colour lies on the phantom's liver: a left-right flip or a shifted overlay fails this.
    ct, lab = web_env["ct"].array, web_env["label"].array
    k = ct.shape[0] // 2  # reset views show the middle slice; with an even count it may be either neighbour
    scale = _axial_scale(axial, ct[k])
    coloured = _liver_coloured(axial)
    coloured[:40] = coloured[-40:] = False  # view icons and slice slider
    projected = _screen_mask(ndimage.binary_dilation((lab == 1).any(axis=0)), axial.shape[:2], scale)
    on_slice = _screen_mask((lab[k] == 1) | (lab[k - 1] == 1), axial.shape[:2], scale)
    assert (coloured & projected).sum() / coloured.sum() > 0.75, "liver colour outside the phantom's liver"
    assert (coloured & on_slice).sum() / on_slice.sum() > 0.8, "the phantom's liver is not coloured"

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


def _save(page, name: str) -> None:
    page.fill("[data-testid=lw-out-name] input", name)
    page.click("[data-testid=lw-save]")
    page.wait_for_function(
        f"() => document.querySelector('[data-testid=lw-saved]').textContent.includes('{name}.nii.gz')")


def test_save_writes_the_model_result_and_the_edit_voxel_by_voxel(page, web_env):
    from LiverCTSegmentationLib.engine import io, pipeline
    from LiverCTSegmentationLib.engine.bundle import ModelBundle
    from LiverCTSegmentationLib.engine.segfile import read_seg_nrrd

    data, ct = web_env["data"], web_env["ct"]
    # Unedited (paint was undone): exactly what the deterministic model gives for this CT.
    _save(page, "model")
    expected = pipeline.segment(ct, ModelBundle.load(web_env["bundle"]), pipeline.SegmentOptions(device="cpu"))
    model = io.read_volume(data / "model.nii.gz")
    assert model.array.dtype == np.uint8 and model.same_grid(ct)
    assert np.array_equal(model.array, expected.labelmap.array)

    before = _voxels(page)
    _stroke(page, 0.05, 0.35, 0.10)
    edited_count = _wait_voxels(page, f"v > {before}")
    _save(page, "edited")
    nii = io.read_volume(data / "edited.nii.gz")
    assert nii.array.dtype == np.uint8 and nii.same_grid(ct)
    assert int(np.count_nonzero(nii.array == 1)) == edited_count
    # The edit is exactly the painted voxels: all label 1, in the air above the body, in a thin slab
    # (the brush is a small sphere) around the axial slice on screen.
    changed = nii.array != model.array
    painted = changed & (nii.array == 1) & (model.array == 0)
    assert painted.any() and np.array_equal(changed, painted)
    assert (ct.array[painted] < -500).all()
    k_mid, ks = ct.array.shape[0] // 2, np.nonzero(painted)[0]
    assert k_mid - 4 <= ks.min() and ks.max() <= k_mid + 3, sorted(set(ks.tolist()))

    seg, segments = read_seg_nrrd(data / "edited.seg.nrrd")
    assert seg.same_grid(ct)
    assert np.array_equal(np.asarray(seg.array), nii.array)
    by_name = {s["name"]: s for s in segments}
    assert set(by_name) == {"Liver", "Liver tumor"}
    liver, tumor = by_name["Liver"], by_name["Liver tumor"]
    assert (liver["value"], tumor["value"]) == (1, 2)
    assert np.allclose(liver["color"], np.array([221, 130, 101]) / 255, atol=1e-3)
    assert np.allclose(tumor["color"], np.array([144, 238, 144]) / 255, atol=1e-3)
    # Slicer TerminologyEntry: context ~ category ~ type ~ type modifier ~ anatomic context ~ region ~ ...
    liver_term, tumor_term = liver["terminology"].split("~"), tumor["terminology"].split("~")
    assert liver_term[1] == "SCT^123037004^Anatomical Structure" and liver_term[2] == "SCT^10200004^Liver"
    assert tumor_term[2] == "SCT^108369006^Neoplasm" and tumor_term[5] == "SCT^10200004^Liver"

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
    assert _upload_folder_files(web_env) == []  # refused uploads leave nothing behind


def test_valid_upload_replaces_the_ct(page, web_env):
    page.set_input_files("[data-testid=lw-upload] input[type=file]", str(web_env["tmp"] / "small_upload.nii.gz"))
    page.wait_for_function("() => document.querySelector('[data-testid=lw-ct-name]').textContent"
                           ".includes('small_upload.nii.gz')")
    assert _wait_voxels(page, "v === 0") == 0  # a fresh scene: the old segmentation is gone
    assert page.input_value("[data-testid=lw-out-name] input") == "small_upload_liverseg"
    assert [p.name.split("_", 1)[1] for p in _upload_folder_files(web_env)] == ["small_upload.nii.gz"]


def test_open_a_ct_picked_from_the_data_folder_list(page, web_env):
    page.click("[data-testid=lw-file-select]")
    page.locator(".v-overlay .v-list-item", has_text="phantom2.nii.gz").click()
    page.click("[data-testid=lw-open]")
    page.wait_for_function("() => document.querySelector('[data-testid=lw-ct-name]').textContent"
                           ".includes('phantom2.nii.gz')")
    # The name and the message are two state updates: wait for the message too (seen lagging under load).
    page.wait_for_function("() => document.querySelector('[data-testid=lw-message]').textContent"
                           ".includes('Opened phantom2.nii.gz')")
    assert page.input_value("[data-testid=lw-out-name] input") == "phantom2_liverseg"
    assert _poll(lambda: True if _upload_folder_files(web_env) == [] else None, 10), \
        "the replaced CT's upload was left in the server's temp folder"
