"""Small deterministic DICOM CT series for the DICOM SEG / DICOMweb tests: an off-centre "liver" block
(HU 120) holding a "tumour" (HU 25) on a -100 HU background, in a chosen orientation, segmented by the
threshold bundle (bundle_fixtures.make_box_bundle) into a known, asymmetric labelmap."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bundle_fixtures import make_box_bundle
from LiverCTSegmentationLib.engine import dicom
from LiverCTSegmentationLib.engine.volume import Volume

ORIENTATIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
}


def _oblique() -> np.ndarray:
    a, b = np.radians(12.0), np.radians(7.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


ORIENTATIONS["oblique"] = _oblique()


def box_ct(orientation: str = "LPS", shape_kji=(24, 40, 48), spacing=(2.0, 2.0, 2.5)) -> Volume:
    arr = np.full(shape_kji, -100, dtype=np.int16)
    arr[4:20, 6:30, 8:40] = 120   # liver block, nearer one corner in every axis
    arr[8:16, 10:18, 26:36] = 25  # tumour inside it, off-centre
    arr[2:6, 30:36, 2:8] = 120    # a second small block: breaks any remaining symmetry
    return Volume(arr, spacing, (-40.0, -55.0, -20.0), ORIENTATIONS[orientation])


def box_bundle(folder: Path) -> Path:
    return make_box_bundle(folder, liver_hu=(80.0, 200.0), tumor_hu=(0.0, 50.0), two_stage=True,
                           coarse_spacing=4.0, fine_spacing=2.0, margin_mm=10.0)


def write_series(folder: Path, orientation: str = "LPS", **kw) -> list[Path]:
    return dicom.write_dicom_series(box_ct(orientation), folder, patient_id="BOX^CASE", **kw)
