"""Evaluation measures: label overlap (Klein et al. 2009) and deformation error.

Pure numpy functions, no file I/O; arrays are on one grid (the target's working grid), in nibabel's
voxel axis order ``(I, J, K)``; vector fields are ``(3, I, J, K)``, component ``c`` along voxel axis
``c``, in mm.
"""

from __future__ import annotations

import numpy as np

PERCENTILES = (0.3, 5, 25, 50, 75, 95, 99.7)


def label_overlaps(warped: np.ndarray, target: np.ndarray, labels=None) -> dict[int, dict[str, float]]:
    """Per-label overlap of a warped source label map ``S`` with the target ``T``.

    For each label ``r`` (default: the non-zero labels of the target):
    ``target_overlap = |S_r ∩ T_r| / |T_r|`` and
    ``dice = 2 |S_r ∩ T_r| / (|S_r| + |T_r|)``, plus the voxel counts used to
    pool them. Labels absent from the target are skipped.
    """
    warped = np.asarray(warped).ravel()
    target = np.asarray(target).ravel()
    if warped.shape != target.shape:
        raise ValueError(f"label_overlaps: shapes differ ({warped.size} vs {target.size} voxels)")
    ids = np.unique(target[target != 0]) if labels is None else np.asarray(labels)
    out = {}
    for r in ids:
        t = target == r
        n_t = int(t.sum())
        if n_t == 0:
            continue
        s = warped == r
        inter = int((s & t).sum())
        out[int(r)] = {
            "intersection": inter,
            "target_voxels": n_t,
            "source_voxels": int(s.sum()),
            "target_overlap": inter / n_t,
            "dice": 2 * inter / (n_t + int(s.sum())),
        }
    return out


def total_target_overlap(overlaps: dict[int, dict[str, float]]) -> float:
    """Klein et al. 2009 target overlap pooled over labels: ``sum_r |S_r ∩ T_r| / sum_r |T_r|``."""
    inter = sum(v["intersection"] for v in overlaps.values())
    total = sum(v["target_voxels"] for v in overlaps.values())
    return inter / total if total else float("nan")


def displacement_error_mm(disp_a: np.ndarray, disp_b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-voxel Euclidean distance (mm) between two displacement fields ``(3, I, J, K)`` in mm.

    Fields are channel-first like the rest of ``qs``: component ``c`` along voxel axis ``c``.
    With ``mask`` (``(I, J, K)``) only the voxels inside it are returned (flattened, C order).
    """
    d = np.linalg.norm(np.asarray(disp_a, np.float64) - np.asarray(disp_b, np.float64), axis=0)
    return d[np.asarray(mask) > 0] if mask is not None else d.ravel()


def error_percentiles(errors: np.ndarray, percentiles=PERCENTILES) -> dict[str, float]:
    """The paper's percentiles of a deformation error sample, keyed ``p0.3``, ``p5``, ..."""
    values = np.percentile(np.asarray(errors, np.float64), percentiles)
    return {f"p{p:g}": float(v) for p, v in zip(percentiles, values)}


OVERLAP_COLUMNS = ["pair", "method", "label", "target_overlap", "dice"]


def overlap_rows(pair: str, method: str, warped: np.ndarray, target: np.ndarray) -> list[dict]:
    """Rows of ``target_overlap.tsv`` for one pair and method: one per label, then ``all``.

    The ``all`` row pools voxels over labels (Klein et al. 2009 target
    overlap; the Dice of the pooled counts).
    """
    ov = label_overlaps(warped, target)
    rows = [{"pair": pair, "method": method, "label": str(r), "target_overlap": v["target_overlap"], "dice": v["dice"]} for r, v in ov.items()]
    inter = sum(v["intersection"] for v in ov.values())
    sizes = sum(v["target_voxels"] + v["source_voxels"] for v in ov.values())
    rows.append({"pair": pair, "method": method, "label": "all", "target_overlap": total_target_overlap(ov), "dice": 2 * inter / sizes if sizes else float("nan")})
    return rows


def detj_summary(detj: np.ndarray) -> dict:
    """Summary of a Jacobian-determinant map: ``detj_min``, ``detj_max``,
    ``detj_pos`` (det J > 0 at every voxel: no folding) and ``detj_nonpos_voxels``."""
    detj = np.asarray(detj, np.float64)
    nonpos = int(np.count_nonzero(~(detj > 0)))  # NaN counts as not positive
    return {"detj_min": float(np.nanmin(detj)), "detj_max": float(np.nanmax(detj)),
            "detj_pos": nonpos == 0, "detj_nonpos_voxels": nonpos}
