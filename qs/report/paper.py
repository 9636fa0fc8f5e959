"""The paper's published numbers (Yang et al., NeuroImage 2017), set beside ours in the report.

Deformation errors in mm (OASIS, 1 mm), det J > 0 as a percent of pairs; target overlap as a fraction.
"""

from __future__ import annotations

import pandas as pd

from ..fields import check_field
from .tsv import PERCENTILE_COLUMNS

#: Yang et al. 2017, deformation error vs LDDMM optimization on OASIS (mm), det J > 0 (% of pairs)
PAPER_DEFORMATION_ERROR = pd.DataFrame(
    [
        ("affine only", 0.0613, 0.2520, 0.6896, 1.1911, 1.8743, 3.1413, 5.3661, "n/a"),
        ("D, velocity, stride 5", 0.0237, 0.0709, 0.1601, 0.2626, 0.4117, 0.7336, 1.5166, "100%"),
        ("D, velocity, stride 14", 0.0254, 0.0750, 0.1675, 0.2703, 0.4150, 0.7430, 1.5598, "100%"),
        ("D, deformation, stride 5", 0.0223, 0.0665, 0.1549, 0.2614, 0.4119, 0.7388, 1.5845, "56%"),
        ("D, deformation, stride 14", 0.0242, 0.0721, 0.1671, 0.2772, 0.4337, 0.7932, 1.6805, "0%"),
        ("P, momentum, stride 14, 50 samples", 0.0166, 0.0479, 0.1054, 0.1678, 0.2546, 0.4537, 1.1049, "100%"),
        ("D, momentum, stride 5", 0.0129, 0.0376, 0.0884, 0.1534, 0.2506, 0.4716, 1.1095, "100%"),
        ("D, momentum, stride 14", 0.0130, 0.0372, 0.0834, 0.1359, 0.2112, 0.3902, 0.9433, "100%"),
        ("D, momentum, stride 14, 40 epochs", 0.0119, 0.0351, 0.0793, 0.1309, 0.2070, 0.3924, 0.9542, "100%"),
        ("D, momentum, stride 14 + correction", 0.0104, 0.0309, 0.0704, 0.1167, 0.1850, 0.3478, 0.8410, "100%"),
    ],
    columns=["method", *PERCENTILE_COLUMNS, "detj_pos"],
)
#: our method -> the paper's closest row, for networks that learn the momentum
PAPER_ROW_OF = {
    "affine": "affine only",
    "predict": "D, momentum, stride 14",
    "predict+correct": "D, momentum, stride 14 + correction",
    "predict-mc": "P, momentum, stride 14, 50 samples",
}


def paper_rows(field: str = "momentum") -> dict[str, str]:
    """Our method -> the paper's closest row for networks that learn ``field`` (``train.field``).

    The paper's velocity and deformation models have only a plain prediction
    row; corrected and MC-dropout predictions of them are set beside its
    momentum rows.
    """
    rows = dict(PAPER_ROW_OF)
    if check_field(field) != "momentum":
        rows["predict"] = f"D, {field}, stride 14"
    return rows


#: Yang et al. 2017, mean target overlap over pairs (Klein et al. 2009 label sets)
PAPER_TARGET_OVERLAP = pd.DataFrame(
    [
        ("LPBA40", 0.702, 0.695, 0.699, 0.715),
        ("IBSR18", 0.533, 0.515, 0.526, 0.528),
        ("CUMC12", 0.534, 0.515, 0.525, 0.514),
        ("MGH10", 0.567, 0.553, 0.561, 0.568),
    ],
    columns=["data set", "lddmm", "predict", "predict+correct", "syn"],
)
