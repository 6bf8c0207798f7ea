"""Slicer .seg.nrrd: metadata Slicer needs, and a lossless round trip."""
from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from LiverCTSegmentationLib.engine import io
from LiverCTSegmentationLib.engine.errors import OutputError
from LiverCTSegmentationLib.engine.segfile import read_seg_nrrd, write_seg_nrrd
from LiverCTSegmentationLib.engine.volume import Volume

LABELS = [
    {"value": 1, "name": "Liver", "color": [221, 130, 101],
     "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"], "type": ["SCT", "10200004", "Liver"]}},
    {"value": 2, "name": "Liver tumor", "color": [144, 238, 144],
     "terminology": {"category": ["SCT", "49755003", "Morphologically Altered Structure"],
                     "type": ["SCT", "108369006", "Neoplasm"], "region": ["SCT", "10200004", "Liver"]}},
]
LIVER_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
              "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")
TUMOR_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^49755003^Morphologically Altered "
              "Structure~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^")


def _labelmap(direction=np.eye(3)) -> Volume:
    arr = np.zeros((12, 15, 18), np.uint8)
    arr[2:9, 3:12, 4:15] = 1
    arr[4:6, 5:7, 6:9] = 2
    return Volume(arr, (0.8, 0.9, 2.0), (-100.0, 50.5, -20.0), direction)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]),
                                       Rotation.from_euler("zyx", [20, 10, -35], degrees=True).as_matrix()],
                         ids=["lps", "ras", "oblique"])
def test_round_trip(tmp_path: Path, direction) -> None:
    lab = _labelmap(direction)
    out = write_seg_nrrd(lab, LABELS, tmp_path / "result.seg.nrrd")
    back, segs = read_seg_nrrd(out)
    np.testing.assert_array_equal(back.array, lab.array)
    assert back.same_grid(lab, atol=1e-6)
    assert [s["name"] for s in segs] == ["Liver", "Liver tumor"]
    assert [s["value"] for s in segs] == [1, 2]
    for s, label in zip(segs, LABELS):
        np.testing.assert_allclose(s["color"], np.array(label["color"]) / 255.0, atol=1e-5)
    assert segs[0]["terminology"] == LIVER_TERM and segs[1]["terminology"] == TUMOR_TERM
    # extent is i_min i_max j_min j_max k_min k_max of each segment
    assert segs[0]["extent"] == [4, 14, 3, 11, 2, 8] and segs[1]["extent"] == [6, 8, 5, 6, 4, 5]
    assert [p.name for p in tmp_path.iterdir()] == ["result.seg.nrrd"]
    # The file holds only the labelled box (Slicer's "crop to minimum extent"); as a plain NRRD
    # image for ITK it is that box, placed where it lies in patient space.
    plain = io.read_volume(out)
    np.testing.assert_array_equal(plain.array, lab.array[2:9, 3:12, 4:15])
    box = Volume(lab.array[2:9, 3:12, 4:15], lab.spacing, tuple(lab.physical_points(np.array([[4.0, 3.0, 2.0]]))[0]),
                 lab.direction)
    assert plain.same_grid(box, atol=1e-6)


def test_header_has_slicer_keys(tmp_path: Path) -> None:
    out = write_seg_nrrd(_labelmap(), LABELS, tmp_path / "r.seg.nrrd")
    hdr = nrrd.read_header(str(out))
    assert hdr["space"] == "left-posterior-superior"
    assert hdr["Segmentation_ContainedRepresentationNames"].startswith("Binary labelmap")
    assert hdr["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert hdr["Segmentation_ReferenceImageExtentOffset"] == "4 3 2"  # i j k of the stored box
    assert tuple(hdr["sizes"]) == (11, 9, 7)
    # segment extents in the file are relative to the stored box, as Slicer writes them
    assert hdr["Segment0_Extent"] == "0 10 0 8 0 6" and hdr["Segment1_Extent"] == "2 4 2 3 2 3"
    geometry = [p for p in hdr["Segmentation_ConversionParameters"].split("&")
                if p.startswith("Reference image geometry|")]
    assert len(geometry) == 1
    nums = [float(x) for x in geometry[0].split("|")[1].split(";") if x]
    np.testing.assert_allclose(np.reshape(nums[:16], (4, 4)), _labelmap().ijk_to_ras(), atol=1e-12)
    assert nums[16:] == [0, 17, 0, 14, 0, 11]
    for n in (0, 1):
        for key in ("ID", "Name", "Color", "LabelValue", "Layer", "Extent", "Tags"):
            assert f"Segment{n}_{key}" in hdr
    assert hdr["Segment0_Layer"] == "0" and hdr["Segment1_LabelValue"] == "2"
    assert hdr["Segment0_Tags"] == f"TerminologyEntry:{LIVER_TERM}|"


def test_ras_space_file_is_read_in_lps(tmp_path: Path) -> None:
    lab = _labelmap(np.diag([-1.0, 1.0, 1.0]))
    out = write_seg_nrrd(lab, LABELS, tmp_path / "r.seg.nrrd")
    data, hdr = nrrd.read(str(out))
    flip = np.diag([-1.0, -1.0, 1.0])
    hdr["space"] = "right-anterior-superior"
    hdr["space directions"] = hdr["space directions"] @ flip
    hdr["space origin"] = flip @ hdr["space origin"]
    nrrd.write(str(tmp_path / "ras.seg.nrrd"), data, hdr)
    back, segs = read_seg_nrrd(tmp_path / "ras.seg.nrrd")
    assert back.same_grid(lab, atol=1e-6) and len(segs) == 2
    np.testing.assert_array_equal(back.array, lab.array)


def test_empty_segment_and_overwrite(tmp_path: Path) -> None:
    lab = _labelmap()
    lab = lab.with_array(np.where(lab.array == 2, 1, lab.array).astype(np.uint8))
    out = write_seg_nrrd(lab, LABELS, tmp_path / "r.seg.nrrd")
    _, segs = read_seg_nrrd(out)
    assert segs[1]["extent"] == [0, -1, 0, -1, 0, -1]
    with pytest.raises(OutputError, match="already exists"):
        write_seg_nrrd(lab, LABELS, out)
    write_seg_nrrd(_labelmap(), LABELS, out, overwrite=True)
    assert (read_seg_nrrd(out)[0].array == 2).sum() == 12
    with pytest.raises(OutputError, match=".seg.nrrd"):
        write_seg_nrrd(lab, LABELS, tmp_path / "r.nrrd")


def test_io_facade_writes_seg(tmp_path: Path) -> None:
    out = io.write_seg_nrrd(_labelmap(), LABELS, tmp_path / "f.seg.nrrd")
    with open(out, "rb") as fh:
        assert fh.read(4) == b"NRRD"
    assert read_seg_nrrd(out)[1][0]["name"] == "Liver"


def test_segment_extents_match_brute_force_on_random_blobs(tmp_path: Path) -> None:
    # Extents are searched inside the labelled voxels' bounding box only; they must equal a full search.
    rng = np.random.default_rng(3)
    for trial in range(5):
        arr = np.zeros((23, 31, 37), np.uint8)
        for value in (1, 2):
            for _ in range(int(rng.integers(0, 3))):
                k, j, i = (int(rng.integers(0, n)) for n in arr.shape)
                arr[k:k + int(rng.integers(1, 6)), j:j + int(rng.integers(1, 6)), i:i + int(rng.integers(1, 6))] = value
        vol = Volume(arr, (0.8, 0.9, 2.5), (1.0, -2.0, 3.0), np.eye(3))
        out = write_seg_nrrd(vol, LABELS, tmp_path / f"t{trial}.seg.nrrd")
        _, segs = read_seg_nrrd(out)
        for seg in segs:
            kk, jj, ii = np.nonzero(arr == seg["value"])
            want = [0, -1, 0, -1, 0, -1] if kk.size == 0 else \
                [int(ii.min()), int(ii.max()), int(jj.min()), int(jj.max()), int(kk.min()), int(kk.max())]
            assert seg["extent"] == want, (trial, seg["name"])


def test_uncropped_write_and_files_without_reference_geometry(tmp_path: Path) -> None:
    lab = _labelmap()
    full = write_seg_nrrd(lab, LABELS, tmp_path / "full.seg.nrrd", crop=False)
    hdr = nrrd.read_header(str(full))
    assert tuple(hdr["sizes"]) == (18, 15, 12) and hdr["Segmentation_ReferenceImageExtentOffset"] == "0 0 0"
    back, segs = read_seg_nrrd(full)
    np.testing.assert_array_equal(back.array, lab.array)
    assert segs[0]["extent"] == [4, 14, 3, 11, 2, 8]
    # A cropped file from a writer that left out the reference geometry: the box's own grid.
    data, hdr = nrrd.read(str(write_seg_nrrd(lab, LABELS, tmp_path / "c.seg.nrrd")), index_order="C")
    hdr["Segmentation_ConversionParameters"] = "Collapse labelmaps|1|x"
    nrrd.write(str(tmp_path / "nogeo.seg.nrrd"), data, hdr, index_order="C")
    box, _ = read_seg_nrrd(tmp_path / "nogeo.seg.nrrd")
    np.testing.assert_array_equal(box.array, lab.array[2:9, 3:12, 4:15])
    np.testing.assert_allclose(box.origin, lab.physical_points(np.array([[4.0, 3.0, 2.0]]))[0], atol=1e-9)


def test_cropped_file_is_placed_exactly_by_slicer(tmp_path: Path, scene) -> None:
    """Slicer's own storage node (slicer-core) reads the cropped file onto the right voxels."""
    slicer = pytest.importorskip("slicer")
    direction = Rotation.from_euler("zyx", [20, 10, -35], degrees=True).as_matrix()
    lab = _labelmap(direction)
    out = write_seg_nrrd(lab, LABELS, tmp_path / "r.seg.nrrd")
    ref = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(ref, np.zeros(lab.array.shape, np.int16))
    ref.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(lab.ijk_to_ras()))
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    st = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    st.SetFileName(str(out))
    assert st.ReadData(seg)
    s = seg.GetSegmentation()
    names = {s.GetNthSegment(n).GetName(): s.GetNthSegmentID(n) for n in range(s.GetNumberOfSegments())}
    assert set(names) == {"Liver", "Liver tumor"}
    for name, value in (("Liver", 1), ("Liver tumor", 2)):
        got = slicer.util.arrayFromSegmentBinaryLabelmap(seg, names[name], ref)
        np.testing.assert_array_equal(got > 0, lab.array == value)
