"""Aggregation of the per-pair evaluations into the report's tables (pure: DataFrames and arrays in and out).

Deformation errors in mm, times in seconds; methods in report order (:func:`qs.report.methods.report_order`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..evaluate import error_percentiles
from .methods import is_syn, report_order
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


def strongest_syn(overlap: pd.DataFrame) -> str | None:
    """The SyN setting (``syn``, ``syn-quick``, ``syn-*``) with the highest mean pooled target overlap on the pairs
    every SyN setting ran on (``evaluate.syn_max_pairs`` runs the slow ones on fewer), else None."""
    allrows = _overlap_by_pair(overlap)
    syn = allrows[[m for m in allrows.columns if is_syn(m)]]
    if syn.empty:
        return None
    shared = syn.dropna()
    means = (shared if len(shared) else syn).mean()
    return str(means.sort_values(ascending=False, kind="stable").index[0])


def overlap_reference(overlap: pd.DataFrame) -> str | None:
    """The method the report compares the others with: the strongest SyN setting, else LDDMM, else None."""
    ref = strongest_syn(overlap)
    if ref is None and (overlap["method"] == "lddmm").any():
        ref = "lddmm"
    return ref


def _overlap_by_pair(overlap: pd.DataFrame) -> pd.DataFrame:
    """The pooled target overlap (``all`` rows) as a table: one row per pair, one column per method."""
    return overlap[overlap["label"] == "all"].pivot_table(index="pair", columns="method", values="target_overlap")


def accuracy_time_table(overlap: pd.DataFrame, timing: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean and worst-pair pooled target overlap, median seconds per pair and threads, and against the
    reference (:func:`overlap_reference`) per pair: mean, worst and best difference, pairs at or above it."""
    mo = mean_overlap_table(overlap).set_index("method")
    tt = timing_table(timing).set_index("method") if len(timing) else pd.DataFrame(columns=["median_s", "threads"])
    ref = overlap_reference(overlap)
    allrows = _overlap_by_pair(overlap)
    cols = ["method", "target_overlap_mean", "target_overlap_min", "median_s", "threads", "pairs", "reference",
            "vs_reference_mean", "vs_reference_min", "vs_reference_max", "pairs_at_or_above_reference"]
    rows = []
    for m in report_order([*mo.index, *tt.index]):
        row = {"method": m, "target_overlap_mean": mo["target_overlap_mean"].get(m, math.nan),
               "target_overlap_min": mo["target_overlap_min"].get(m, math.nan),
               "median_s": float(tt["median_s"].get(m, math.nan)), "threads": tt["threads"].get(m, ""),
               "pairs": int(mo["pairs"].get(m, 0)), "reference": ref or ""}
        if ref is not None and m in allrows and ref in allrows:
            d = (allrows[m] - allrows[ref]).dropna()
            row |= {"vs_reference_mean": d.mean(), "vs_reference_min": d.min(), "vs_reference_max": d.max(),
                    "pairs_at_or_above_reference": int((d >= 0).sum())}
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def pair_overlap_table(overlap: pd.DataFrame) -> pd.DataFrame:
    """Pooled target overlap per pair (rows) and method (columns, report order), with each pair's difference
    from the reference (:func:`overlap_reference`) in columns ``METHOD - REF``."""
    allrows = _overlap_by_pair(overlap)
    methods = report_order(allrows.columns)
    out = allrows[methods].copy()
    ref = overlap_reference(overlap)
    if ref is not None:
        for m in methods:
            if m != ref:
                out[f"{m} - {ref}"] = allrows[m] - allrows[ref]
    return out.reset_index()


def label_overlap_table(overlap: pd.DataFrame, names: dict | None = None) -> pd.DataFrame:
    """Per label and method: mean and worst-pair target overlap over pairs, and the mean difference from the
    reference (:func:`overlap_reference`) on that label, pair by pair on the pairs the reference ran on; ``name``
    from ``names`` (id -> structure name)."""
    labels = overlap[overlap["label"] != "all"]
    cols = ["label", "name", "method", "target_overlap_mean", "target_overlap_min", "reference", "vs_reference"]
    if labels.empty:
        return pd.DataFrame(columns=cols)
    ref = overlap_reference(overlap)
    g = labels.groupby(["label", "method"])["target_overlap"]
    table = pd.DataFrame({"target_overlap_mean": g.mean(), "target_overlap_min": g.min()}).reset_index()
    table["reference"] = ref or ""
    if ref:  # per pair, on the pairs the reference ran on
        own = labels[labels["method"] == ref].set_index(["label", "pair"])["target_overlap"]
        diff = labels.assign(d=labels["target_overlap"].to_numpy() - own.reindex(
            pd.MultiIndex.from_frame(labels[["label", "pair"]])).to_numpy())
        table["vs_reference"] = table.set_index(["label", "method"]).index.map(
            diff.groupby(["label", "method"])["d"].mean())
    else:
        table["vs_reference"] = math.nan
    names = {str(k): str(v) for k, v in (names or {}).items()}
    table["name"] = table["label"].map(lambda label: names.get(str(label), ""))
    order = {m: i for i, m in enumerate(report_order(table["method"]))}
    table = table.assign(_id=pd.to_numeric(table["label"], errors="coerce"), _m=table["method"].map(order))
    return table.sort_values(["_id", "_m"])[cols].reset_index(drop=True)
