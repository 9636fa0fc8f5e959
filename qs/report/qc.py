"""The affine QC table: every subject's affine to the atlas, with outliers flagged against the cohort's own spread.

Pure: the per-subject QC dicts of :func:`qs.preprocess.preprocess_subject` (``*_preprocess.json``) in, a
DataFrame out. A cohort's affines differ in scale (head size, voxel sizes a header gets wrong) and, when its
scans are stored rotated against their headers, in rotation; what marks a broken affine is a subject far from
the others. Each measure is compared with the cohort's median in robust standard deviations
(``1.4826 * MAD``, never below the measure's floor in :data:`FLOORS`, so that a cohort of near-identical
subjects does not flag noise): beyond :data:`Z_LIMIT` on the bad side, the subject is flagged. An affine that
mirrors the brain (det < 0) is always flagged.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

#: columns of ``affine_qc.tsv``
QC_COLUMNS = ["subject", "ncc_with_atlas", "atlas_mask_coverage", "affine_determinant", "scale_min", "scale_max",
              "rotation_deg", "shear", "reoriented", "flagged", "flags"]
#: measure -> (which side is bad: -1 low, +1 high, 0 both; floor of its robust sd). Determinant on a log scale.
FLOORS = {
    "ncc_with_atlas": (-1, 0.03),
    "atlas_mask_coverage": (-1, 0.03),
    "log_determinant": (0, 0.05),
    "scale_min": (0, 0.03),
    "scale_max": (0, 0.03),
    "rotation_deg": (0, 3.0),
    "shear": (1, 0.03),
}
Z_LIMIT = 3.5  # Iglewicz and Hoaglin's cut for the modified z-score


def qc_rows(records: list[dict]) -> pd.DataFrame:
    """One row per subject from the QC dicts (``subject``, ``ncc_with_atlas``, ``affine_determinant``, ``scales``,
    ``rotation_deg``, ``shear``, ``atlas_mask_coverage``, ``reoriented``; missing measures are NaN, as in files of
    older runs)."""
    rows = []
    for r in records:
        scales = r.get("scales") or [math.nan]
        rot = r.get("rotation_deg")
        rows.append({"subject": str(r["subject"]), "ncc_with_atlas": float(r.get("ncc_with_atlas", math.nan)),
                     "atlas_mask_coverage": float(r.get("atlas_mask_coverage", math.nan)),
                     "affine_determinant": float(r.get("affine_determinant", math.nan)),
                     "scale_min": float(min(scales)), "scale_max": float(max(scales)),
                     "rotation_deg": float(rot) if rot is not None else math.nan,
                     "shear": float(r.get("shear", math.nan)), "reoriented": bool(r.get("reoriented", False))})
    return pd.DataFrame(rows, columns=QC_COLUMNS[:-2])


def robust_z(values: np.ndarray, floor: float) -> np.ndarray:
    """``(x - median) / max(1.4826 MAD, floor)`` over the finite values (NaN stays NaN)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full_like(values, np.nan)
    med = np.median(finite)
    sd = max(1.4826 * float(np.median(np.abs(finite - med))), floor)
    return (values - med) / sd


def affine_qc_table(records: list[dict], *, z_limit: float = Z_LIMIT) -> pd.DataFrame:
    """The QC table (:data:`QC_COLUMNS`): each subject's measures, ``flagged`` and ``flags`` (what is off, with the
    cohort's median: ``ncc_with_atlas 0.31 (cohort 0.66)``; "" when nothing is)."""
    df = qc_rows(records)
    measures = df.assign(log_determinant=np.log(df["affine_determinant"].where(df["affine_determinant"] > 0)))
    flags = [[] for _ in range(len(df))]
    for name, (side, floor) in FLOORS.items():
        z = robust_z(measures[name].to_numpy(float), floor)
        bad = np.abs(z) > z_limit if side == 0 else side * z > z_limit
        shown = "affine_determinant" if name == "log_determinant" else name
        median = float(np.nanmedian(df[shown])) if df[shown].notna().any() else math.nan
        for i in np.flatnonzero(bad):
            flags[i].append(f"{shown} {df[shown].iloc[i]:.3g} (cohort {median:.3g})")
    for i, det in enumerate(df["affine_determinant"]):
        if det <= 0:
            flags[i].insert(0, f"affine_determinant {det:.3g}: the affine mirrors or collapses the brain")
    df["flagged"] = [bool(f) for f in flags]
    df["flags"] = ["; ".join(dict.fromkeys(f)) for f in flags]
    return df[QC_COLUMNS]


def qc_warning(table: pd.DataFrame) -> str | None:
    """One line naming the flagged subjects and why, or None when none is flagged."""
    bad = table[table["flagged"]]
    if bad.empty:
        return None
    what = "; ".join(f"{r.subject}: {r.flags}" for r in bad.itertuples())
    return (f"affine QC flags {len(bad)} of {len(table)} subjects against the cohort's spread "
            f"(look at their *_qc.png): {what}")
