"""Aggregation of the per-pair evaluations into the report's tables (pure: DataFrames and arrays in and out).

Deformation errors in mm, times in seconds; methods in report order (:func:`qs.report.methods.report_order`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..evaluate import error_percentiles
from .methods import report_order
from .tsv import DEFORMATION_COLUMNS


def pool_errors(per_pair: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Method -> the error samples of all pairs concatenated (float32), methods in report order."""
    methods = report_order(m for errors in per_pair for m in errors)
    return {m: np.concatenate([np.asarray(e[m], np.float32).ravel() for e in per_pair if m in e]) for m in methods}


def deformation_error_table(pooled: dict[str, np.ndarray], detj: pd.DataFrame) -> pd.DataFrame:
    """The contract table: percentiles of the pooled errors of each method, and ``detj_pos_pct``.

    ``pooled`` maps a method to its error samples over all pairs
    (:func:`pool_errors`); ``detj`` has the columns of :data:`qs.report.tsv.DETJ_COLUMNS`.
    ``detj_pos_pct`` is NaN for ``affine`` and for methods without det J rows.
    """
    rows = []
    for m, sample in pooled.items():
        if sample.size == 0:
            continue
        pos = detj.loc[detj["method"] == m, "detj_pos"].astype(bool)
        pct = 100.0 * pos.mean() if (m != "affine" and len(pos)) else math.nan
        rows.append({"method": m, **error_percentiles(sample), "detj_pos_pct": pct})
    return pd.DataFrame(rows, columns=DEFORMATION_COLUMNS)


def mean_overlap_table(overlap: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean, sd, min of the per-pair pooled target overlap (``all`` rows), mean Dice, pairs."""
    allrows = overlap[overlap["label"] == "all"]
    out = []
    for m in report_order(allrows["method"]):
        g = allrows[allrows["method"] == m]
        out.append({"method": m, "target_overlap_mean": g["target_overlap"].mean(),
                    "target_overlap_sd": g["target_overlap"].std(ddof=1) if len(g) > 1 else math.nan,
                    "target_overlap_min": g["target_overlap"].min(), "dice_mean": g["dice"].mean(), "pairs": len(g)})
    return pd.DataFrame(out, columns=["method", "target_overlap_mean", "target_overlap_sd", "target_overlap_min", "dice_mean", "pairs"])


def timing_table(timing: pd.DataFrame) -> pd.DataFrame:
    """Per method: median and mean seconds per pair, the devices and thread counts used, pairs, speed-up over LDDMM (median)."""
    out = []
    for m in report_order(timing["method"]):
        g = timing[timing["method"] == m]
        out.append({"method": m, "median_s": g["seconds"].median(), "mean_s": g["seconds"].mean(),
                    "device": ", ".join(sorted(set(g["device"].astype(str)))),
                    "threads": ", ".join(str(t) for t in sorted(set(g["threads"].astype(int)))), "pairs": len(g)})
    df = pd.DataFrame(out, columns=["method", "median_s", "mean_s", "device", "threads", "pairs"])
    ref = df.loc[df["method"] == "lddmm", "median_s"]
    df["speedup_vs_lddmm"] = (float(ref.iloc[0]) / df["median_s"]) if len(ref) else math.nan
    return df


def method_settings(timing: pd.DataFrame) -> dict[str, str]:
    """Method -> the settings its summaries state (``timing``'s ``settings`` column; distinct ones joined by
    "; "), for the methods that state any, in report order."""
    if "settings" not in timing:
        return {}
    out = {}
    for m in report_order(timing["method"]):
        texts = [t for t in dict.fromkeys(timing.loc[timing["method"] == m, "settings"]) if isinstance(t, str) and t]
        if texts:
            out[m] = "; ".join(texts)
    return out


def detj_table(detj: pd.DataFrame) -> pd.DataFrame:
    """Per method: pairs with det J > 0 everywhere / all pairs, and the extreme det J over pairs."""
    out = []
    for m in report_order(detj["method"]):
        g = detj[detj["method"] == m]
        pos = g["detj_pos"].astype(bool)
        out.append({"method": m, "pairs_pos": int(pos.sum()), "pairs": len(g), "detj_pos_pct": 100.0 * pos.mean(),
                    "detj_min": g["detj_min"].min(), "detj_max": g["detj_max"].max(),
                    "nonpos_voxels": int(g["detj_nonpos_voxels"].sum())})
    return pd.DataFrame(out, columns=["method", "pairs_pos", "pairs", "detj_pos_pct", "detj_min", "detj_max", "nonpos_voxels"])
