"""DICOM SEG and TID 1500 SR out of the engine (engine/dicom_seg.py, engine/dicom_sr.py), read back by
dcmqi, an independent reader: the SEG's labelmap must equal the NIfTI labelmap voxel for voxel."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")

from bundle_fixtures import LABELS  # noqa: E402
from conftest import REAL_DATA_DIR  # noqa: E402
from dcmqi_readback import read_sr, seg_to_labelmap_on  # noqa: E402
from LiverCTSegmentationLib.engine import dicom, dicom_seg, dicom_sr, io, statistics  # noqa: E402
from LiverCTSegmentationLib.engine.errors import InputError, OutputError  # noqa: E402
from LiverCTSegmentationLib.engine.volume import Volume  # noqa: E402

try:
    from LiverCTSegmentationLib.synthetic.phantom import make_phantom
except ImportError:  # before the phantom moved to synthetic/
    from LiverCTSegmentationLib.engine.phantom import make_phantom


def _on_read_grid(label: Volume, ct_read: Volume) -> Volume:
    """``label`` resampled (nearest) onto the grid the DICOM reader returned."""
    import SimpleITK as sitk

    img = sitk.Resample(label.to_sitk(), ct_read.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return ct_read.with_array(sitk.GetArrayFromImage(img).astype(np.uint8))


def _series(tmp_path: Path, ct: Volume, label: Volume, **kw) -> tuple[Volume, Volume, list[Path]]:
    dicom.write_dicom_series(ct, tmp_path / "dcm", **kw)
    read = dicom.read_dicom_series(tmp_path / "dcm")
    return read, _on_read_grid(label, read), dicom_seg.series_files(read)


def _roundtrip(tmp_path: Path, labelmap: Volume, files: list[Path]) -> tuple[np.ndarray, np.ndarray, object]:
    io.write_volume(labelmap, tmp_path / "label.nii.gz", overwrite=True)
    seg = dicom_seg.write_dicom_seg(labelmap, files, LABELS, tmp_path / "case_seg.dcm", "test-model", "9.8.7")
    nifti = io.read_volume(tmp_path / "label.nii.gz").array
    back = seg_to_labelmap_on(tmp_path / "case_seg.dcm", tmp_path / "label.nii.gz", tmp_path / "dcmqi")
    return back, nifti, seg


def _left_handed(ct: Volume, label: Volume) -> tuple[Volume, Volume]:
    """The same scan with its k axis reversed (a left-handed direction, e.g. slices stored head first)."""
    d = ct.direction.copy()
    origin = np.asarray(ct.origin) + d[:, 2] * ct.spacing[2] * (ct.array.shape[0] - 1)
    d[:, 2] *= -1
    flip = lambda v: Volume(v.array[::-1].copy(), v.spacing, tuple(origin), d)  # noqa: E731
    return flip(ct), flip(label)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "oblique", "left-handed"])
def test_seg_read_back_by_dcmqi_equals_nifti(tmp_path: Path, orientation: str) -> None:
    ct, label = make_phantom(7, shape_kji=(36, 56, 60), orientation="LPS" if orientation == "left-handed"
                             else orientation, n_lesions=3, fov="full")
    if orientation == "left-handed":
        ct, label = _left_handed(ct, label)
    _read, labelmap, files = _series(tmp_path, ct, label)
    assert set(np.unique(labelmap.array)) == {0, 1, 2}, "the test needs liver and tumour voxels"
    back, nifti, seg = _roundtrip(tmp_path, labelmap, files)
    assert np.array_equal(back, nifti), f"{int((back != nifti).sum())} voxels differ"
    # Not a symmetric labelmap: a mirrored SEG would differ.
    assert not np.array_equal(nifti, nifti[:, ::-1]) and not np.array_equal(nifti, nifti[:, :, ::-1])


def test_seg_references_the_source_and_copies_patient_study(tmp_path: Path) -> None:
    import pydicom

    ct, label = make_phantom(3, shape_kji=(24, 40, 40), orientation="LPS", n_lesions=2, fov="full")
    _read, labelmap, files = _series(tmp_path, ct, label, patient_id="PAT-17^X")
    src = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
    seg = dicom_seg.write_dicom_seg(labelmap, files, LABELS, tmp_path / "s.dcm", "liverct-real", "0.2.0")
    ds = pydicom.dcmread(str(tmp_path / "s.dcm"))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.StudyInstanceUID == src[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    assert ds.SeriesInstanceUID != src[0].SeriesInstanceUID
    assert ds.SOPInstanceUID not in {s.SOPInstanceUID for s in src}
    assert ds.PatientID == "PAT-17^X" and str(ds.PatientName) == str(src[0].PatientName)
    assert ds.StudyDate == src[0].StudyDate and "PatientBirthDate" in ds and not ds.PatientBirthDate  # empty, not made up
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence} == {s.SOPInstanceUID for s in src}
    assert ds.Manufacturer == dicom_seg.MANUFACTURER and "liverct-real 0.2.0" in ds.DeviceSerialNumber
    segs = {s.SegmentLabel: s for s in ds.SegmentSequence}
    assert list(segs) == ["Liver", "Liver tumor"]
    liver, tumour = segs["Liver"], segs["Liver tumor"]
    assert (liver.SegmentedPropertyTypeCodeSequence[0].CodeValue, liver.SegmentedPropertyCategoryCodeSequence[0]
            .CodeValue) == ("10200004", "123037004")
    assert (tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            tumour.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            tumour.AnatomicRegionSequence[0].CodeValue) == ("108369006", "49755003", "10200004")
    assert all(s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT" for s in segs.values())
    algo = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("liverct-real", "0.2.0")
    assert seg.SOPInstanceUID == ds.SOPInstanceUID


def test_empty_tumour_and_empty_labelmap_still_give_both_segments(tmp_path: Path) -> None:
    ct, label = make_phantom(3, shape_kji=(20, 32, 32), orientation="LPS", n_lesions=0, fov="full")
    _read, labelmap, files = _series(tmp_path, ct, label)
    for name, arr in (("liver_only", np.minimum(labelmap.array, 1)), ("empty", np.zeros_like(labelmap.array))):
        out = tmp_path / name
        out.mkdir()
        back, nifti, seg = _roundtrip(out, labelmap.with_array(arr), files)
        assert np.array_equal(back, nifti) and [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Liver tumor"]


def test_labelmap_off_the_series_grid_is_refused(tmp_path: Path) -> None:
    ct, label = make_phantom(3, shape_kji=(20, 32, 32), orientation="LPS", n_lesions=0, fov="full")
    _read, labelmap, files = _series(tmp_path, ct, label)
    shifted = Volume(labelmap.array, labelmap.spacing, tuple(np.add(labelmap.origin, (0.4 * labelmap.spacing[0], 0, 0))),
                     labelmap.direction)
    with pytest.raises(OutputError, match="not on the grid"):
        dicom_seg.write_dicom_seg(shifted, files, LABELS, tmp_path / "s.dcm", "m", "1")
    assert not (tmp_path / "s.dcm").exists()
    with pytest.raises(InputError, match="not read from a DICOM series"):
        dicom_seg.series_files(label)


def test_sr_measurements_read_back_by_dcmqi(tmp_path: Path) -> None:
    ct, label = make_phantom(5, shape_kji=(40, 64, 64), orientation="LPS", n_lesions=3, fov="full")
    _read, labelmap, files = _series(tmp_path, ct, label)
    stats = statistics.compute_statistics(labelmap)
    assert stats.tumor_count >= 1
    seg = dicom_seg.write_dicom_seg(labelmap, files, LABELS, tmp_path / "s.dcm", "m", "1")
    dicom_sr.write_dicom_sr(seg, stats, dicom_seg.read_source_headers(files), tmp_path / "sr.dcm", "m", "1",
                            labels=LABELS)
    doc = read_sr(tmp_path / "sr.dcm", tmp_path / "dcmqi")
    groups = {g["TrackingIdentifier"]: g for g in doc["Measurements"]}
    values = {k: {i["quantity"]["CodeMeaning"]: float(i["value"]) for i in g["measurementItems"]}
              for k, g in groups.items()}
    assert groups["Liver"]["ReferencedSegment"] == 1
    assert groups["Liver"]["segmentationSOPInstanceUID"] == seg.SOPInstanceUID
    assert groups["Liver tumor (all lesions)"]["ReferencedSegment"] == 2
    assert values["Liver"]["Volume"] == pytest.approx(stats.liver_ml)
    assert values["Liver tumor (all lesions)"] == {"Volume": pytest.approx(stats.tumor_ml),
                                                   "Quantity": stats.tumor_count}
    for les in stats.lesions:
        assert values[f"Lesion {les.index}"] == {"Volume": pytest.approx(les.volume_ml),
                                                 "Diameter": pytest.approx(les.longest_axial_diameter_mm)}
    assert len(groups) == 2 + stats.tumor_count


@pytest.mark.parametrize("name", ["chaos_evalsample", "lits_117crop"])
def test_real_ct_series_seg_read_back_by_dcmqi(tmp_path: Path, name: str) -> None:
    ct_path, label_path = REAL_DATA_DIR / f"{name}_ct.nii.gz", REAL_DATA_DIR / f"{name}_label.nii.gz"
    if not (ct_path.is_file() and label_path.is_file()):
        pytest.skip(f"real CT {ct_path} not available")
    ct, label = io.read_volume(ct_path), io.read_volume(label_path)
    label = label.with_array(np.asarray(label.array).astype(np.uint8))
    _read, labelmap, files = _series(tmp_path, ct, label, rescale_intercept=-1024.0)
    assert labelmap.array.max() >= 1
    back, nifti, _seg = _roundtrip(tmp_path, labelmap, files)
    assert np.array_equal(back, nifti), f"{int((back != nifti).sum())} voxels differ"
