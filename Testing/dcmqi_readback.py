"""Read a DICOM SEG / TID 1500 SR back with dcmqi (QIICR's converters, which Slicer's DICOM SEG support
is built on): an independent reader for the geometry and codes liverseg writes."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def dcmqi_tool(name: str) -> str:
    """Path of a dcmqi command (pip package ``dcmqi``); skips the test when it is not installed."""
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"dcmqi's {name} is not installed (pip install dcmqi, the 'dicom' extra)")
    return found


def seg_to_labelmap_on(seg_path: Path, reference: Path, workdir: Path) -> np.ndarray:
    """The SEG's merged labelmap (value = segment number) placed on ``reference``'s voxel grid by
    index offset, after checking that dcmqi's grid is that grid (same axes and spacing, origin on a
    voxel centre): a voxel-for-voxel comparison, no resampling."""
    import SimpleITK as sitk

    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([dcmqi_tool("segimage2itkimage"), "--inputDICOM", str(seg_path), "--outputDirectory",
                    str(workdir), "-p", "seg", "-t", "nii", "--mergeSegments"], check=True, capture_output=True)
    outs = sorted(workdir.glob("seg-*.nii*"))
    assert len(outs) == 1, f"dcmqi wrote {outs}: overlapping segments?"
    back, ref = sitk.ReadImage(str(outs[0])), sitk.ReadImage(str(reference))
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), atol=1e-4)
    start = np.array(ref.TransformPhysicalPointToContinuousIndex(back.GetOrigin()))
    assert np.abs(start - np.rint(start)).max() < 1e-2, f"dcmqi's origin is between voxels: index {start}"
    i0, j0, k0 = (int(v) for v in np.rint(start))
    arr = sitk.GetArrayFromImage(back)
    out = np.zeros(sitk.GetArrayFromImage(ref).shape, dtype=np.uint8)
    nk, nj, ni = arr.shape
    assert min(i0, j0, k0) >= 0 and k0 + nk <= out.shape[0] and j0 + nj <= out.shape[1] and i0 + ni <= out.shape[2]
    out[k0:k0 + nk, j0:j0 + nj, i0:i0 + ni] = arr
    return out


def read_sr(sr_path: Path, workdir: Path) -> dict:
    """dcmqi's JSON of a TID 1500 report (tid1500reader)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "sr.json"
    subprocess.run([dcmqi_tool("tid1500reader"), "--inputDICOM", str(sr_path), "--outputMetadata", str(out)],
                   check=True, capture_output=True)
    return json.loads(out.read_text())
