"""Write the two result files of "Save" as one unit: both, or neither.

``DataFolder.output_paths`` refuses names that exist, so a file left behind
by a half-failed save would block a retry under the same name; hence the
``.seg.nrrd`` written first is removed again when the NIfTI write fails.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..engine import io
from ..engine.volume import Volume

log = logging.getLogger("liverseg.web")


def write_outputs(labelmap: Volume, labels: list[dict], out: dict[str, Path]) -> list[Path]:
    """``out`` from ``DataFolder.output_paths``; returns the written paths (seg.nrrd, NIfTI)."""
    seg = io.write_seg_nrrd(labelmap, labels, out["seg_nrrd"], overwrite=False)
    try:
        nii = io.write_volume(labelmap, out["nifti"], overwrite=False)
    except BaseException:
        try:
            seg.unlink()
        except OSError:  # keep the original error; the operator sees this one in the log
            log.warning("could not remove %s after a failed save", seg, exc_info=True)
        raise
    return [seg, nii]
