"""Turn an edited labelmap into the numbers the statistics panel shows."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..engine.plausibility import plausibility_warnings
from ..engine.statistics import compute_statistics
from ..engine.volume import Volume


def stats_view(labelmap: Volume, liver_label: int = 1, tumor_label: int = 2,
               ct: Optional[Volume] = None) -> dict[str, Any]:
    """Panel content for a labelmap: liver volume, lesions (volume, diameter), burden, voxel counts,
    and, given the open ``ct``, the plausibility warnings of the liver as it is now (after edits).

    Voxel counts are shown too (small print) because they change with every
    brush stroke even when the rounded millilitres do not.
    """
    arr = np.asarray(labelmap.array)
    st = compute_statistics(labelmap, liver_label=liver_label, tumor_label=tumor_label)
    # Nothing segmented yet is not a finding; an edited liver is judged again (no network probability).
    warnings = plausibility_warnings(ct, labelmap) if ct is not None and arr.any() else []
    return {
        "liver_ml": f"{st.liver_ml:.1f}",
        "tumor_ml": f"{st.tumor_ml:.2f}",
        "tumor_count": int(st.tumor_count),
        "burden_percent": f"{st.burden_percent:.2f}",
        "liver_voxels": int(np.count_nonzero(arr == liver_label)),
        "tumor_voxels": int(np.count_nonzero(arr == tumor_label)),
        "lesions": [
            {"index": int(l.index), "volume_ml": f"{l.volume_ml:.2f}",
             "diameter_mm": f"{l.longest_axial_diameter_mm:.1f}"}
            for l in st.lesions
        ],
        "warnings": warnings,
    }


def empty_stats() -> dict[str, Any]:
    """Panel content before any segmentation exists."""
    return {"liver_ml": "-", "tumor_ml": "-", "tumor_count": 0, "burden_percent": "-",
            "liver_voxels": 0, "tumor_voxels": 0, "lesions": [], "warnings": []}
