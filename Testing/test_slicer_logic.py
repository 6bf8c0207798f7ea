"""The Slicer module's logic against REAL MRML (slicer-core), without the Slicer app.

A synthetic abdomen (liver box + tumour box) is written as an OBLIQUE NRRD,
loaded through a real ``vtkMRMLVolumeArchetypeStorageNode``, put under a
linear transform, and segmented by ``LiverCTSegmentationLogic.process`` with a
deterministic threshold bundle. Also: the background worker protocol, run for
real as a subprocess.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
pytest.importorskip("SimpleITK")

import slicer_fakes  # noqa: E402

slicer_fakes.install_fakes()

from LiverCTSegmentationLib.engine import pipeline  # noqa: E402
from LiverCTSegmentationLib.engine.bundle import ModelBundle  # noqa: E402
from LiverCTSegmentationLib.engine.volume import Volume  # noqa: E402
from LiverCTSegmentationLib.slicerui import mrml_convert, results_table  # noqa: E402
from LiverCTSegmentationLib.slicerui.logic import LiverCTSegmentationLogic  # noqa: E402
from LiverCTSegmentationLib.slicerui.runner import SubprocessRun, WorkerProtocol  # noqa: E402

LIVER_HU, TUMOR_HU = (80.0, 200.0), (20.0, 60.0)


def oblique_direction(deg: float = 20.0) -> np.ndarray:
    a, b = math.radians(deg), math.radians(deg / 2)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


def synthetic_ct(shape_kji=(28, 40, 44), spacing=(2.5, 2.5, 3.0)) -> Volume:
    """Fat-density body (-80 HU), liver box 130 HU, tumour box 40 HU inside it."""
    arr = np.full(shape_kji, -80, dtype=np.int16)
    arr[:, :2, :] = -1000  # some air
    arr[6:22, 8:32, 6:30] = 130
    arr[10:16, 14:22, 12:20] = 40
    return Volume(arr, spacing, (12.0, -30.0, 40.0), oblique_direction())


@pytest.fixture(scope="module")
def box_bundle(tmp_path_factory):
    from bundle_fixtures import make_box_bundle

    return ModelBundle.load(make_box_bundle(tmp_path_factory.mktemp("box"), liver_hu=LIVER_HU, tumor_hu=TUMOR_HU))


@pytest.fixture(scope="module")
def coarse_box_bundle(tmp_path_factory):
    """Same thresholds on coarse grids: keeps full-size phantom runs to seconds on 2 CPU cores."""
    from bundle_fixtures import make_box_bundle

    return ModelBundle.load(make_box_bundle(tmp_path_factory.mktemp("box_coarse"), liver_hu=LIVER_HU,
                                            tumor_hu=TUMOR_HU, coarse_spacing=8.0, fine_spacing=6.0))


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    import SimpleITK as sitk

    p = tmp_path_factory.mktemp("ct") / "oblique_ct.nrrd"
    sitk.WriteImage(synthetic_ct().to_sitk(), str(p), True)
    return p


def load_volume(scene, path: Path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(path).stem)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"could not read {path}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def add_transform(scene, node):
    import vtk

    tr = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 15.0)
    m.SetElement(1, 3, -7.0)
    m.SetElement(0, 1, 0.1)
    tr.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(tr.GetID())
    return tr


def segment_ids(segNode) -> dict[str, str]:
    s = segNode.GetSegmentation()
    return {s.GetSegment(s.GetNthSegmentID(i)).GetName(): s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())}


def engine_reference(vol: Volume, bundle) -> Volume:
    """The engine's own labelmap (ground truth for the MRML round trip)."""
    lm = pipeline.segment(vol, bundle, pipeline.SegmentOptions(device="cpu")).labelmap
    assert (lm.array == 1).sum() > 100 and (lm.array == 2).sum() > 10, "test volume must give liver and tumour"
    return lm


@pytest.fixture(scope="module")
def reference_labelmap(ct_file, box_bundle):
    """Engine result for the volume as Slicer's storage node loads it (what process() feeds the engine).

    Note: the file read by SimpleITK and the node differ by ~1e-15 mm in spacing
    (float noise of matrix decomposition); see file_reference_labelmap.
    """
    sc = slicer_fakes.setup_core_scene()
    try:
        return engine_reference(mrml_convert.volume_from_node(load_volume(sc, ct_file)), box_bundle)
    finally:
        sc.Clear(True)


@pytest.fixture(scope="module")
def file_reference_labelmap(ct_file, box_bundle):
    """Engine result for the file read by the engine itself (what the worker sees)."""
    from LiverCTSegmentationLib.engine import io

    return engine_reference(io.read_volume(ct_file), box_bundle)


# --------------------------------------------------------------------------- pure parts
def test_terminology_string_round_trips_through_slicer(box_bundle):
    for lab in box_bundle.labels:
        s = mrml_convert.terminology_string(lab["terminology"])
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(s, entry), s
        assert entry.GetTypeObject().GetCodeValue() == lab["terminology"]["type"][1]
        assert entry.GetCategoryObject().GetCodeValue() == lab["terminology"]["category"][1]
        if "region" in lab["terminology"]:
            assert entry.GetRegionObject().GetCodeValue() == "10200004"
        assert slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry) == s


def test_volume_from_node_keeps_oblique_geometry(scene, ct_file):
    from LiverCTSegmentationLib.engine import io

    node = load_volume(scene, ct_file)
    vol = mrml_convert.volume_from_node(node)
    ref = io.read_volume(ct_file)
    assert vol.same_grid(ref), (vol.spacing, ref.spacing, vol.origin, ref.origin)
    np.testing.assert_array_equal(vol.array, ref.array)


def test_statistics_rows_convert_lps_to_ras():
    rows = results_table.statistics_rows({"liver_ml": 1500.0, "tumor_count": 1, "tumor_ml": 2.5, "burden_percent": 0.17,
                                          "lesions": [{"index": 1, "volume_ml": 2.5, "longest_axial_diameter_mm": 18.0,
                                                       "centroid_lps": [10.0, -20.0, 30.0]}]})
    assert rows[0][:2] == ["Liver", "1500.0"]
    assert rows[1] == ["Liver tumor 1", "2.50", "18.0", "-10.0", "20.0", "30.0"]
    assert rows[-1][0].startswith("Tumor burden")


# --------------------------------------------------------------------------- process()
def test_process_writes_segments_matching_engine(scene, ct_file, box_bundle, reference_labelmap, tmp_path):
    vol_node = load_volume(scene, ct_file)
    tr = add_transform(scene, vol_node)
    stages = []
    logic = LiverCTSegmentationLogic()
    seg, stats = logic.process(vol_node, model=box_bundle, device="cpu",
                               progressCallback=lambda f, s: stages.append((f, s)))
    assert stages and stages[-1] == (1.0, "done")
    assert all(0.0 <= f <= 1.0 for f, _ in stages)

    ids = segment_ids(seg)
    assert list(ids) == ["Liver", "Liver tumor"]
    # Parent transform copied; reference geometry = input volume.
    assert seg.GetTransformNodeID() == tr.GetID()
    assert seg.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is vol_node
    for lab in box_bundle.labels:
        segment = seg.GetSegmentation().GetSegment(ids[lab["name"]])
        assert np.allclose(segment.GetColor(), np.array(lab["color"]) / 255.0)
        term = mrml_convert.get_tag(segment, segment.GetTerminologyEntryTagName())
        assert term == mrml_convert.terminology_string(lab["terminology"])
        assert mrml_convert.get_tag(segment, mrml_convert.CREATED_BY_TAG) == mrml_convert.CREATED_BY_VALUE
        got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, ids[lab["name"]], vol_node)
        want = reference_labelmap.array == lab["value"]
        assert got.shape == want.shape
        assert int(got.sum()) == int(want.sum())
        np.testing.assert_array_equal(got > 0, want)
    # Closed surface for 3D, statistics table filled.
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    table = logic.statisticsTableNode(seg)
    assert table.GetNumberOfRows() == len(results_table.statistics_rows(stats))
    assert table.GetCellText(0, 0) == "Liver"
    assert abs(float(table.GetCellText(0, 1)) - stats.liver_ml) < 0.06
    # Statistics agree with the labelmap voxel volume (liver volume includes its tumours).
    assert abs(stats.liver_ml - (reference_labelmap.array > 0).sum() * reference_labelmap.voxel_volume_mm3 / 1000) < 0.01


def test_reused_node_never_overwrites_user_edits(scene, ct_file, box_bundle, reference_labelmap):
    vol_node = load_volume(scene, ct_file)
    logic = LiverCTSegmentationLogic()
    seg, _ = logic.process(vol_node, model=box_bundle, device="cpu")
    ids = segment_ids(seg)
    # User edits our liver segment and adds their own "Liver tumor"-named segment elsewhere.
    edited = slicer.util.arrayFromSegmentBinaryLabelmap(seg, ids["Liver"], vol_node)
    edited[0:3, 0:3, 0:3] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, seg, ids["Liver"], vol_node)
    user = seg.GetSegmentation().AddEmptySegment("", "Spleen", [0.5, 0.5, 0.9])
    spleen = np.zeros_like(edited)
    spleen[1:4, 30:35, 30:35] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(spleen, seg, user, vol_node)

    seg2, _ = logic.process(vol_node, outputSegmentationNode=seg, model=box_bundle, device="cpu")
    assert seg2 is seg
    ids2 = segment_ids(seg)
    # Edited liver kept as is; a new "Liver (2)" holds the new result; unedited tumour replaced in place.
    assert set(ids2) == {"Liver", "Liver tumor", "Spleen", "Liver (2)"}
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, ids2["Liver"], vol_node) > 0, edited > 0)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, ids2["Spleen"], vol_node) > 0, spleen > 0)
    assert ids2["Liver tumor"] == ids["Liver tumor"]
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, ids2["Liver (2)"], vol_node) > 0,
                                  reference_labelmap.array == 1)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, ids2["Liver tumor"], vol_node) > 0,
                                  reference_labelmap.array == 2)


def test_per_lesion_segments(scene, ct_file, box_bundle, reference_labelmap):
    vol_node = load_volume(scene, ct_file)
    seg, stats = LiverCTSegmentationLogic().process(vol_node, model=box_bundle, device="cpu", perLesionSegments=True)
    names = list(segment_ids(seg))
    assert names == ["Liver"] + [f"Liver tumor {i}" for i in range(1, stats.tumor_count + 1)]
    total = sum(int(slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_ids(seg)[n], vol_node).sum())
                for n in names[1:])
    assert total == int((reference_labelmap.array == 2).sum())


def test_seg_nrrd_round_trip(scene, ct_file, box_bundle, tmp_path):
    vol_node = load_volume(scene, ct_file)
    seg, _ = LiverCTSegmentationLogic().process(vol_node, model=box_bundle, device="cpu")
    before = {n: slicer.util.arrayFromSegmentBinaryLabelmap(seg, i, vol_node) for n, i in segment_ids(seg).items()}
    out = tmp_path / "result.seg.nrrd"
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out))
    assert storage.WriteData(seg), "writing .seg.nrrd failed"

    loaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "loaded")
    rd = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    rd.SetFileName(str(out))
    assert rd.ReadData(loaded), "reading .seg.nrrd failed"
    after_ids = segment_ids(loaded)
    assert list(after_ids) == list(before)
    for name, arr in before.items():
        got = slicer.util.arrayFromSegmentBinaryLabelmap(loaded, after_ids[name], vol_node)
        np.testing.assert_array_equal(got > 0, arr > 0)
        s0 = seg.GetSegmentation().GetSegment(segment_ids(seg)[name])
        s1 = loaded.GetSegmentation().GetSegment(after_ids[name])
        assert np.allclose(s0.GetColor(), s1.GetColor(), atol=1e-3)
        tag = s0.GetTerminologyEntryTagName()
        assert mrml_convert.get_tag(s1, tag) == mrml_convert.get_tag(s0, tag)


def test_empty_result_still_creates_editable_segments(scene, tmp_path, box_bundle):
    """No tumour found -> an empty 'Liver tumor' segment the user can paint into."""
    import SimpleITK as sitk

    vol = synthetic_ct()
    vol.array[vol.array == 40] = 130  # no tumour intensity left
    p = tmp_path / "no_tumor.nrrd"
    sitk.WriteImage(vol.to_sitk(), str(p))
    vol_node = load_volume(scene, p)
    seg, stats = LiverCTSegmentationLogic().process(vol_node, model=box_bundle, device="cpu")
    assert stats.tumor_count == 0
    assert list(segment_ids(seg)) == ["Liver", "Liver tumor"]


def test_process_rejects_missing_input(scene):
    from LiverCTSegmentationLib.engine.errors import InputError

    with pytest.raises(InputError):
        LiverCTSegmentationLogic().process(None)


def test_subject_hierarchy_places_output_next_to_input(scene, ct_file, box_bundle):
    vol_node = load_volume(scene, ct_file)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    # In the app, Subject Hierarchy's Qt plugin logic creates the item; slicer-core has none.
    sh.CreateItem(study, vol_node)
    seg, _ = LiverCTSegmentationLogic().process(vol_node, model=box_bundle, device="cpu")
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study


# --------------------------------------------------------------------------- background worker
def _venv_python() -> str:
    return sys.executable


def test_worker_protocol_parses_partial_lines():
    p = WorkerProtocol()
    assert p.feed('LIVERCT {"event": "progress", "fraction": 0.5, "st') == []
    ev = p.feed('age": "coarse"}\nhello\n')
    assert [e.kind for e in ev] == ["progress", "log"]
    assert ev[0].data == {"fraction": 0.5, "stage": "coarse"}
    assert p.log == ["hello"]
    cmd = WorkerProtocol.command("in.nrrd", "out", "m", "cpu", True, ((0, 0, 0), (1, 2, 3)), python="py")
    assert cmd[:2] == ["py", str(Path(WorkerProtocol.command.__globals__["WORKER_SCRIPT"]))]
    assert "--fast" in cmd and cmd[-6:] == ["0.0", "0.0", "0.0", "1.0", "2.0", "3.0"]


def test_worker_subprocess_returns_labelmap(ct_file, box_bundle, file_reference_labelmap):
    from LiverCTSegmentationLib.engine import io

    run = SubprocessRun(str(ct_file), model=str(box_bundle.path), device="cpu", python=_venv_python()).start()
    try:
        assert run.wait(timeout=300) == 0, run.stderr_text
        kinds = [e.kind for e in run.events]
        assert "progress" in kinds and kinds[-1] == "done", (kinds, run.stderr_text)
        done = run.result()
        labelmap = io.read_volume(done.data["labelmap"])
        assert labelmap.same_grid(file_reference_labelmap)
        np.testing.assert_array_equal(labelmap.array, file_reference_labelmap.array)
        assert done.data["statistics"]["tumor_count"] >= 1
        assert [lab["name"] for lab in done.data["labels"]] == ["Liver", "Liver tumor"]
        stats = json.loads((Path(run.output_dir) / "statistics.json").read_text())
        assert stats["liver_ml"] == done.data["statistics"]["liver_ml"]
    finally:
        run.cleanup()
    assert not Path(run.temp_dir).exists()


def test_worker_reports_readable_error(tmp_path):
    bad = tmp_path / "not_an_image.nrrd"
    bad.write_text("this is not a volume")
    run = SubprocessRun(str(bad), device="cpu", python=_venv_python()).start()
    try:
        code = run.wait(timeout=120)
        assert code == 2, run.stderr_text
        err = [e for e in run.events if e.kind == "error"]
        assert err and err[-1].data["code"] == "input"
        msg = WorkerProtocol.failure_message(code, run.stderr_text, run.events)
        assert "Traceback" not in msg and msg == err[-1].data["message"]
    finally:
        run.cleanup()


def test_worker_cancel_kills_process(tmp_path, box_bundle):
    import SimpleITK as sitk

    # A larger volume so the run is still going when we cancel.
    big = synthetic_ct(shape_kji=(120, 160, 160), spacing=(1.0, 1.0, 1.0))
    p = tmp_path / "big.nrrd"
    sitk.WriteImage(big.to_sitk(), str(p))
    run = SubprocessRun(str(p), model=str(box_bundle.path), device="cpu", python=_venv_python()).start()
    try:
        t0 = time.time()
        while not any(e.kind == "progress" for e in run.poll() + run.events) and time.time() - t0 < 120:
            time.sleep(0.05)
        assert run.running, "worker finished before it could be cancelled"
        run.cancel()
        assert not run.running
        assert run.proc.returncode != 0
        assert run.result() is None
    finally:
        run.cleanup()


# --------------------------------------------------------------------------- phantom + in-Slicer self-test
def test_process_on_engine_phantom(scene, coarse_box_bundle):
    """Engine phantom (oblique) through an MRML node: segments equal the engine's labelmap."""
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom

    ct, _ = make_phantom(1, shape_kji=(40, 64, 64), spacing=(5.0, 5.0, 6.0), orientation="oblique", fov="full")
    node = slicer.util.addVolumeFromArray(ct.array, ct.ijk_to_ras(), name="phantom")
    box_bundle = coarse_box_bundle
    seg, stats = LiverCTSegmentationLogic().process(node, model=box_bundle, device="cpu")
    expected = pipeline.segment(mrml_convert.volume_from_node(node), box_bundle,
                                pipeline.SegmentOptions(device="cpu")).labelmap
    ids = segment_ids(seg)
    assert list(ids) == ["Liver", "Liver tumor"]
    liver = slicer.util.arrayFromSegmentBinaryLabelmap(seg, ids["Liver"], node)
    assert liver.sum() > 0
    np.testing.assert_array_equal(liver > 0, expected.array == 1)


def test_in_slicer_self_test_runs_on_slicer_core(scene, coarse_box_bundle, monkeypatch):
    """Run the module's own ScriptedLoadableModuleTest (as ctest would), model swapped for the box bundle."""
    import importlib.util

    from LiverCTSegmentationLib.slicerui import modelchoice

    monkeypatch.setattr(modelchoice, "load_bundle", lambda model=None: coarse_box_bundle)
    spec = importlib.util.spec_from_file_location(
        "LiverCTSegmentation", Path(__file__).resolve().parents[1] / "LiverCTSegmentation" / "LiverCTSegmentation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.LiverCTSegmentationTest("runTest").run()
    assert result.wasSuccessful(), result.errors + result.failures


# --------------------------------------------------------------------------- cancel kills the process tree
def test_subprocess_cancel_kills_launcher_and_child(tmp_path):
    """Like PythonSlicer, a launcher runs the worker as a child: Cancel must stop both."""
    import psutil

    hanging = slicer_fakes.write_script(tmp_path, "hanging_worker.py", slicer_fakes.HANGING_WORKER)
    launcher = slicer_fakes.write_launcher(tmp_path, hanging)
    run = SubprocessRun(str(tmp_path / "unused.nrrd"), python=_venv_python(), script=launcher).start()
    child_pid = None
    try:
        t0 = time.time()
        while not any(e.kind == "progress" for e in run.events) and time.time() - t0 < 60:
            run.poll()
            time.sleep(0.05)
        child_pid = int(next(e for e in run.events if e.kind == slicer_fakes.LAUNCHER_EVENT).data["pid"])
        assert run.running and child_pid != run.proc.pid
        run.cancel()
        assert not run.running
        t0 = time.time()
        while not slicer_fakes.process_gone(child_pid):
            assert time.time() - t0 < 10, "Cancel killed the launcher but left its child (the real worker) running"
            time.sleep(0.05)
    finally:
        if child_pid is not None and not slicer_fakes.process_gone(child_pid):
            psutil.Process(child_pid).kill()
        run.cleanup()


def test_kill_process_tree_without_psutil(tmp_path, monkeypatch):
    """The fallback (no psutil in Slicer's Python) still reaches the child."""
    import subprocess

    from LiverCTSegmentationLib.slicerui.runner import kill_process_tree

    hanging = slicer_fakes.write_script(tmp_path, "hanging_worker.py", slicer_fakes.HANGING_WORKER)
    launcher = slicer_fakes.write_launcher(tmp_path, hanging)
    proc = subprocess.Popen([_venv_python(), launcher], stdout=subprocess.PIPE, text=True)
    child_pid = None
    try:
        child_pid = int(json.loads(proc.stdout.readline()[len("LIVERCT "):])["pid"])
        monkeypatch.setitem(sys.modules, "psutil", None)  # "import psutil" now raises ImportError
        kill_process_tree(proc.pid)
        monkeypatch.undo()
        proc.wait(10)
        t0 = time.time()
        while not slicer_fakes.process_gone(child_pid):
            assert time.time() - t0 < 10, "the fallback left the child running"
            time.sleep(0.05)
    finally:
        import psutil

        for pid in (child_pid, proc.pid):
            if pid is not None and not slicer_fakes.process_gone(pid):
                psutil.Process(pid).kill()
        proc.stdout.close()


# --------------------------------------------------------------------------- processFiles (batch) in Slicer
@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    from LiverCTSegmentationLib.engine import io
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom

    folder = tmp_path_factory.mktemp("cases")
    for seed in (3, 4):
        ct, _ = make_phantom(seed, shape_kji=(32, 48, 48), spacing=(6.0, 6.0, 6.0))
        io.write_volume(ct, folder / f"case{seed}.nii.gz")
    return folder


def test_process_files_without_matplotlib_writes_report_and_resumes(phantom_files, tmp_path, monkeypatch, caplog):
    """Slicer ships no matplotlib: the batch must still work (no overlay pictures) and resume."""
    import csv
    import logging

    from bundle_fixtures import make_box_bundle

    bundle = ModelBundle.load(make_box_bundle(tmp_path / "bundle", liver_hu=(40.0, 120.0), coarse_spacing=8.0,
                                              fine_spacing=6.0))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as in Slicer: "import matplotlib" fails
    out = tmp_path / "results"
    logic = LiverCTSegmentationLogic()
    progress = []
    with caplog.at_level(logging.INFO):
        first = logic.processFiles(str(phantom_files), str(out), model=bundle, device="cpu",
                                   progressCallback=lambda f, s: progress.append(f))
    assert [r.status for r in first] == ["ok", "ok"], [(r.case, r.error) for r in first]
    assert any("matplotlib" in rec.getMessage() for rec in caplog.records), "no note that overlays are skipped"
    assert progress and progress[-1] == 1.0
    with open(out / "report.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["case"] for r in rows) == ["case3", "case4"]
    for r in rows:
        assert r["status"] == "ok" and float(r["liver_ml"]) > 0, r
        assert r["overlay_path"] == ""
        assert (out / r["label_path"]).is_file() and (out / r["seg_path"]).is_file()
    assert not list(out.rglob("*.png"))

    second = LiverCTSegmentationLogic().processFiles(str(phantom_files), str(out), model=bundle, device="cpu")
    assert [r.status for r in second] == ["skipped", "skipped"], "a second call must resume, not redo"
    assert [r.statistics["liver_ml"] for r in second] == [r.statistics["liver_ml"] for r in first]


def test_process_files_writes_overlays_when_matplotlib_is_there(phantom_files, tmp_path):
    pytest.importorskip("matplotlib")
    from bundle_fixtures import make_box_bundle

    from LiverCTSegmentationLib.slicerui.logic import overlays_available

    assert overlays_available()
    bundle = make_box_bundle(tmp_path / "bundle", liver_hu=(40.0, 120.0), coarse_spacing=8.0, fine_spacing=6.0)
    results = LiverCTSegmentationLogic().processFiles([str(next(phantom_files.glob("case3*")))], str(tmp_path / "o"),
                                                      model=str(bundle), device="cpu")
    assert [r.status for r in results] == ["ok"]
    assert (tmp_path / "o" / results[0].outputs["overlay"]).is_file()


# --------------------------------------------------------------------------- warnings, tables, ROI, progress
def test_process_passes_engine_warnings(scene, tmp_path, box_bundle, caplog):
    """Engine warnings (here: no liver found) reach the caller's callback, else the log."""
    import logging

    import SimpleITK as sitk

    vol = synthetic_ct()
    vol.array[vol.array > 0] = -80  # air and fat only: no liver intensity at all
    p = tmp_path / "no_liver.nrrd"
    sitk.WriteImage(vol.to_sitk(), str(p))
    vol_node = load_volume(scene, p)
    logic = LiverCTSegmentationLogic()
    got = []
    logic.process(vol_node, model=box_bundle, device="cpu", warningCallback=got.append)
    assert any("No liver found" in w for w in got), got
    assert logic.lastWarnings == got
    with caplog.at_level(logging.WARNING):
        logic.process(vol_node, model=box_bundle, device="cpu")
    assert any("No liver found" in r.getMessage() for r in caplog.records)


def test_process_passes_plausibility_warnings(scene, ct_file, box_bundle):
    """The synthetic "liver" box (~170 mL) is no adult liver: the panel is told to review it."""
    from LiverCTSegmentationLib.engine.plausibility import REVIEW

    logic = LiverCTSegmentationLogic()
    got = []
    logic.process(load_volume(scene, ct_file), model=box_bundle, device="cpu", warningCallback=got.append)
    review = [w for w in got if w.startswith(REVIEW)]
    assert any("liver volume" in w and "outside the plausible" in w for w in review), got
    assert logic.lastWarnings == got


def test_each_segmentation_gets_its_own_statistics_table(scene, ct_file, box_bundle, tmp_path):
    import SimpleITK as sitk

    from LiverCTSegmentationLib.slicerui.logic import TABLE_REFERENCE_ROLE

    small = synthetic_ct()
    small.array[small.array == 40] = 130
    small.array[:, :, 20:] = -80  # a smaller liver
    p = tmp_path / "small.nrrd"
    sitk.WriteImage(small.to_sitk(), str(p))
    logic = LiverCTSegmentationLogic()
    seg_a, stats_a = logic.process(load_volume(scene, ct_file), model=box_bundle, device="cpu")
    seg_b, stats_b = logic.process(load_volume(scene, p), model=box_bundle, device="cpu")
    table_a, table_b = seg_a.GetNodeReference(TABLE_REFERENCE_ROLE), seg_b.GetNodeReference(TABLE_REFERENCE_ROLE)
    assert table_a is not None and table_b is not None and table_a is not table_b
    assert stats_a.liver_ml != pytest.approx(stats_b.liver_ml)
    assert float(table_a.GetCellText(0, 1)) == pytest.approx(stats_a.liver_ml, abs=0.06)
    assert float(table_b.GetCellText(0, 1)) == pytest.approx(stats_b.liver_ml, abs=0.06)
    # Re-running into the same segmentation reuses its table; a passed table is used and remembered.
    logic.process(seg_a.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()),
                  outputSegmentationNode=seg_a, model=box_bundle, device="cpu")
    assert seg_a.GetNodeReference(TABLE_REFERENCE_ROLE) is table_a
    mine = scene.AddNewNodeByClass("vtkMRMLTableNode", "mine")
    seg_c, _ = logic.process(load_volume(scene, ct_file), model=box_bundle, device="cpu", tableNode=mine)
    assert seg_c.GetNodeReference(TABLE_REFERENCE_ROLE) is mine and mine.GetCellText(0, 0) == "Liver"
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 3


def test_process_with_roi_under_parent_transform(scene, ct_file, tmp_path):
    """An ROI drawn in world coordinates on a transformed volume restricts the search where the user drew it."""
    import vtk

    from bundle_fixtures import make_box_bundle

    # Single stage: the result is exactly the liver found inside the ROI (no fine-stage margin).
    box_bundle = ModelBundle.load(make_box_bundle(tmp_path / "b", liver_hu=LIVER_HU, tumor_hu=TUMOR_HU,
                                                  two_stage=False, coarse_spacing=2.5))

    vol_node = load_volume(scene, ct_file)
    tr = add_transform(scene, vol_node)
    local = mrml_convert.volume_from_node(vol_node)
    to_world = vtk.vtkMatrix4x4()
    tr.GetMatrixTransformToWorld(to_world)
    to_world_np = np.array([[to_world.GetElement(r, c) for c in range(4)] for r in range(4)])
    # ROI around the tumour-free end of the liver (i 21..29), placed where that part is shown (world).
    ijk = np.array([[i, j, k] for i in (21, 29) for j in (8, 31) for k in (6, 21)], dtype=float)
    ras_local = local.physical_points(ijk) * np.array([-1.0, -1.0, 1.0])
    world = (to_world_np @ np.c_[ras_local, np.ones(len(ras_local))].T).T[:, :3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "roi")
    roi.SetXYZ(*((lo + hi) / 2))
    roi.SetRadiusXYZ(*((hi - lo) / 2))

    # Independent check of roi_to_lps_box: ROI world corners -> volume's local RAS (numpy inverse) -> LPS box.
    b = [0.0] * 6
    roi.GetRASBounds(b)
    corners = np.array([[x, y, z, 1.0] for x in b[0:2] for y in b[2:4] for z in b[4:6]])
    local_lps = (np.linalg.inv(to_world_np) @ corners.T).T[:, :3] * np.array([-1.0, -1.0, 1.0])
    box = mrml_convert.roi_to_lps_box(roi, vol_node)
    np.testing.assert_allclose(np.array(box), np.array([local_lps.min(axis=0), local_lps.max(axis=0)]), atol=1e-6)

    seg, _stats = LiverCTSegmentationLogic().process(vol_node, model=box_bundle, device="cpu", roi=roi)
    want = pipeline.segment(local, box_bundle, pipeline.SegmentOptions(device="cpu", roi_lps=box)).labelmap
    full = pipeline.segment(local, box_bundle, pipeline.SegmentOptions(device="cpu")).labelmap
    got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_ids(seg)["Liver"], vol_node) > 0
    np.testing.assert_array_equal(got, want.array == 1)
    assert 0 < got.sum() < (full.array == 1).sum(), "the ROI must restrict the result"
    # The restricted liver lies towards the end the ROI was drawn on (high i), not the other end.
    assert np.nonzero(got)[2].mean() > np.nonzero(full.array == 1)[2].mean() + 2


def test_progress_never_steps_back_and_every_stage_has_a_name(scene, ct_file, box_bundle):
    from LiverCTSegmentationLib.slicerui.stages import STAGE_NAMES

    seen = []
    LiverCTSegmentationLogic().process(load_volume(scene, ct_file), model=box_bundle, device="cpu",
                                       progressCallback=lambda f, s: seen.append((f, s)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions), seen
    assert seen[-1] == (1.0, "done")
    stages = {s for _, s in seen}
    assert {"coarse", "fine", "resample", "statistics", "importing"} <= stages
    assert not stages - set(STAGE_NAMES), f"stages without a readable name: {stages - set(STAGE_NAMES)}"


def test_models_download_to_slicer_cache_inside_slicer(tmp_path, monkeypatch):
    from LiverCTSegmentationLib import models

    monkeypatch.delenv(models.ENV_MODELS_DIR, raising=False)
    monkeypatch.setattr(slicer.app, "cachePath", str(tmp_path / "SlicerCache"), raising=False)
    assert models.user_models_dir() == tmp_path / "SlicerCache" / "LiverCTSegmentation" / "models"
    monkeypatch.setenv(models.ENV_MODELS_DIR, str(tmp_path / "mine"))
    assert models.user_models_dir() == tmp_path / "mine", "LIVERCT_MODELS_DIR must still win"
    monkeypatch.delenv(models.ENV_MODELS_DIR)
    monkeypatch.delattr(slicer.app, "cachePath")
    assert models.user_models_dir().parts[-2:] == ("liverct-segmentation", "models")


def test_worker_gets_the_resolved_bundle_folder(tmp_path, monkeypatch, box_bundle):
    """The worker (no slicer.app) must use the bundle this process resolved, not search its own cache."""
    import shutil

    from LiverCTSegmentationLib import models
    from LiverCTSegmentationLib.slicerui.modelchoice import model_for_worker

    monkeypatch.setenv(models.ENV_MODELS_DIR, str(tmp_path / "models"))
    shutil.copytree(box_bundle.path, tmp_path / "models" / "threshold-box-test")
    assert model_for_worker("threshold-box-test") == str(tmp_path / "models" / "threshold-box-test")
    assert model_for_worker(box_bundle) == str(box_bundle.path)
    assert model_for_worker("") == str(models.resolve_model(None))


def test_self_test_skips_clearly_without_torch(scene, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "LiverCTSegmentation", Path(__file__).resolve().parents[1] / "LiverCTSegmentation" / "LiverCTSegmentation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setitem(sys.modules, "torch", None)
    result = mod.LiverCTSegmentationTest("runTest").run()
    assert result.wasSuccessful() and len(result.skipped) == 1, (result.errors, result.failures)
    assert "torch not installed" in result.skipped[0][1] and "PyTorch" in result.skipped[0][1]
    # Reload and Test calls runTest() directly: it must show the reason, not fail.
    shown = []
    test = mod.LiverCTSegmentationTest("runTest")
    test.delayDisplay = lambda message, msec=1000: shown.append(message)
    test.runTest()
    assert shown and "torch" in shown[0]


def test_uncertainty_is_imported_over_the_input_and_confidence_tabled(scene, ct_file, box_bundle):
    """The panel's 'Show uncertainty': a scalar volume on the input's geometry (parent transform
    too), coloured and thresholded for an overlay, and a confidence row in the statistics table."""
    vol_node = load_volume(scene, ct_file)
    tr = add_transform(scene, vol_node)
    logic = LiverCTSegmentationLogic()
    seg, _stats = logic.process(vol_node, model=box_bundle, device="cpu")
    assert logic.lastUncertaintyNode is None
    rows_plain = logic.statisticsTableNode(seg).GetNumberOfRows()
    seg, _stats = logic.process(vol_node, seg, model=box_bundle, device="cpu", uncertainty=True)
    node = logic.lastUncertaintyNode
    assert node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
    arr = slicer.util.arrayFromVolume(node)
    assert arr.shape == slicer.util.arrayFromVolume(vol_node).shape and arr.dtype == np.uint8 and arr.max() > 0
    np.testing.assert_allclose(mrml_convert.ijk_to_ras_array(node), mrml_convert.ijk_to_ras_array(vol_node))
    assert node.GetTransformNodeID() == tr.GetID()
    display = node.GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() > 0
    table = logic.statisticsTableNode(seg)
    assert table.GetNumberOfRows() == rows_plain + 1
    assert table.GetCellText(rows_plain, 0).startswith("Confidence")
    assert 0.0 <= float(table.GetCellText(rows_plain, 1)) <= 1.0
    again = logic.process(vol_node, seg, model=box_bundle, device="cpu", uncertainty=True)
    assert logic.lastUncertaintyNode is node and again[0] is seg  # re-run reuses the node, no pile-up


def test_worker_subprocess_returns_the_uncertainty_map(ct_file, box_bundle):
    from LiverCTSegmentationLib.engine import io

    run = SubprocessRun(str(ct_file), model=str(box_bundle.path), device="cpu", python=_venv_python(),
                        uncertainty=True).start()
    try:
        assert run.wait(timeout=300) == 0, run.stderr_text
        done = run.result()
        unsure = io.read_volume(done.data["uncertainty"])
        assert unsure.same_grid(io.read_volume(ct_file), atol=1e-3) and unsure.array.dtype == np.uint8
        assert 0.0 <= done.data["statistics"]["confidence"] <= 1.0
    finally:
        run.cleanup()
