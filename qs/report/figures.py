"""The report's figures, drawn from its tables and arrays (no file reading; :func:`save_figure` writes a PNG).

Deformation errors in mm (log scale), slices in mm along the voxel axes of the target grid; displacements
``(3, I, J, K)`` in mm, drawn at true scale. Figures use :class:`matplotlib.figure.Figure` (no pyplot state)
and always have content: a note in the panel when its data are missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate import PERCENTILES
from ..fields import ERROR_LABEL, check_field
from ..io import atomic_path
from .methods import report_order
from .paper import PAPER_DEFORMATION_ERROR, paper_rows
from .tsv import PERCENTILE_COLUMNS

_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
       "xtick.labelsize": 10, "ytick.labelsize": 10}
_COLORS = {"affine": "#7f7f7f", "lddmm": "#1f77b4", "syn": "#9467bd", "syn-quick": "#c5b0d5", "predict": "#ff7f0e",
           "predict+correct": "#2ca02c", "predict+refine": "#17becf", "predict-mc": "#d62728"}


def _color(m, i=0):
    """Colour of method ``m`` (``i``: its index, for unknown methods)."""
    return _COLORS.get(m, f"C{(i + 5) % 10}")


def _figure(*args, **kwargs):
    """A :class:`matplotlib.figure.Figure` in the report's style (no pyplot state)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(*args, **kwargs)
    return fig


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG at its own dpi (atomically); returns ``path``."""
    import matplotlib

    with matplotlib.rc_context(_RC), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return Path(path)


def _note(ax, text):
    """A note in place of an empty panel."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_target_overlap(overlap: pd.DataFrame):
    """Box plots of the per-pair pooled target overlap per method, and of the per-label overlaps."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(figsize=(12, 4.8), dpi=100, layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        methods = report_order(overlap["method"])
        if not methods:
            _note(ax1, "no labels: target overlap not computed")
            _note(ax2, "no labels")
            return fig
        pooled = overlap[overlap["label"] == "all"]
        labels = overlap[overlap["label"] != "all"]
        rng = np.random.default_rng(0)
        for ax, df, title, ylabel in (
            (ax1, pooled, "Target overlap per pair (pooled over labels)", "target overlap (Klein 2009)"),
            (ax2, labels, "Target overlap per label (all pairs)", "target overlap of one label"),
        ):
            data = [df.loc[df["method"] == m, "target_overlap"].to_numpy(float) for m in methods]
            bp = ax.boxplot(data, tick_labels=methods, widths=0.6, patch_artist=True, showfliers=False,
                            medianprops={"color": "black", "lw": 1.5})
            for i, (patch, m) in enumerate(zip(bp["boxes"], methods)):
                patch.set_facecolor(_color(m, i))
                patch.set_alpha(0.35)
            for i, (d, m) in enumerate(zip(data, methods)):
                ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(d)), d, s=12, color=_color(m, i), zorder=3)
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("method")
            ax.tick_params(axis="x", rotation=20)
            ax.grid(axis="y", alpha=0.3)
        n = pooled["pair"].nunique()
        fig.suptitle(f"Label overlap with the target ({n} test pair{'s' if n != 1 else ''})")
    return fig


def plot_deformation_error(pooled: dict[str, np.ndarray], *, paper: bool = True, field: str = "momentum"):
    """Cumulative distribution of the pooled deformation error per method (:func:`qs.report.tables.pool_errors`),
    and its percentiles next to the paper's rows for ``field`` (:func:`qs.report.paper.paper_rows`; log scale, mm)."""
    rows = paper_rows(field)
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(figsize=(14.5, 5), dpi=100, layout="constrained")
        ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1])
        methods = [m for m, e in pooled.items() if e.size]
        if not methods:
            _note(ax1, "no deformation errors")
            _note(ax2, "no deformation errors")
            return fig
        q = np.linspace(0, 1, 401)
        x = np.arange(len(PERCENTILES))
        floor = 1e-4
        for i, m in enumerate(methods):
            e = pooled[m]
            ax1.plot(np.maximum(np.quantile(e, q), floor), q * 100, color=_color(m, i), lw=2,
                     label=f"{m} (median {np.median(e):.3g} mm)")
            ax2.plot(x, np.maximum(np.percentile(e, PERCENTILES), floor), "o-", color=_color(m, i), lw=2, label=f"{m} (ours)")
            if paper and m in rows:
                row = PAPER_DEFORMATION_ERROR.set_index("method").loc[rows[m], PERCENTILE_COLUMNS]
                ax2.plot(x, row.to_numpy(float), "s--", color=_color(m, i), lw=1.2, alpha=0.8,
                         label=f"paper: {rows[m]}")
        ax1.set_xscale("log")
        ax1.set_xlabel(r"deformation error $|d - d_{LDDMM}|$ (mm; < 1e-4 drawn at 1e-4)")
        ax1.set_ylabel("voxels with smaller error (%)")
        ax1.set_title("Cumulative distribution (brain voxels, all test pairs)")
        ax1.grid(alpha=0.3, which="both")
        ax1.legend(loc="upper left")
        ax2.set_yscale("log")
        ax2.set_xticks(x, [f"{p:g}%" for p in PERCENTILES])
        ax2.set_xlabel("percentile")
        ax2.set_ylabel("deformation error (mm)")
        ax2.set_title("Percentiles: ours (solid) and the paper's OASIS (dashed)" if paper else "Percentiles")
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, borderaxespad=0)
        fig.suptitle("Deformation error against LDDMM optimization")
    return fig


def plot_loss(losses: dict[str, pd.DataFrame], field: str = "momentum"):
    """Training and validation L1 per epoch, one panel per model (units of the learned ``field``)."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    with matplotlib.rc_context(_RC):
        n = max(len(losses), 1)
        fig = _figure(figsize=(5.5 * n, 4.2), dpi=100, layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, n))
        if not losses:
            _note(axes[0], "no training losses given")
            return fig
        for ax, (name, df) in zip(axes, losses.items()):
            ax.plot(df["epoch"], df["train_l1"], "o-", label="training")
            if np.isfinite(df["val_l1"].to_numpy(float)).any():
                ax.plot(df["epoch"], df["val_l1"], "s-", label="validation")
            zero = df["val_zero_l1"].to_numpy(float)  # NaN for a loss.tsv of an older run (read_tsv)
            if np.isfinite(zero).any():
                ax.axhline(float(zero[np.isfinite(zero)][-1]), color="0.4", ls="--", label="validation, zero field")
            vals = df[["train_l1", "val_l1"]].to_numpy(float)
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if vals.size and vals.max() / vals.min() > 10:
                ax.set_yscale("log")
            ax.set_title(f"{name} network")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(ERROR_LABEL[check_field(field)])
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("Training loss (L1 of the predicted field)")
    return fig



_VIEWS = (("axial", 2), ("coronal", 1), ("sagittal", 0))
_AXIS_NAMES = ("R", "A", "S")


def plot_example_pair(ex: dict | None):
    """Mid slices of one pair (:func:`qs.report.example.load_example`): moving, warped moving, target, the target's grid
    mapped by phi_1^{-1} into the moving image, and the uncertainty over the target."""
    import matplotlib

    if not ex:
        with matplotlib.rc_context(_RC):
            fig = _figure(figsize=(6, 2.5), dpi=100)
            _note(fig.add_subplot(), "no example pair given")
        return fig
    target, warped, moving, disp, unc, affine = (ex[k] for k in ("target", "warped", "moving", "disp", "uncertainty", "affine"))
    shape = target.shape
    h = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    diagonal = np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3])))
    coords = [(affine[c, 3] if diagonal else 0.0) + np.arange(shape[c]) * h[c] for c in range(3)]
    axis_label = [f"{_AXIS_NAMES[c]} (mm)" if diagonal else f"voxel axis {c} (mm)" for c in range(3)]

    columns = (["moving"] if moving is not None else []) + ["warped moving", "target", "grid"]
    columns += ["uncertainty"] if unc is not None else []
    titles = {"grid": r"$\varphi_1^{-1}$ of the target grid" + (", on moving" if moving is not None else ""),
              "uncertainty": "MC-dropout uncertainty"}
    volumes = {"moving": moving, "warped moving": warped, "target": target}
    vmax = float(np.percentile(target[target > 0], 99.5)) if (target > 0).any() else float(target.max() or 1)
    umax = float(np.percentile(unc[unc > 0], 99)) if unc is not None and (unc > 0).any() else 1.0
    with matplotlib.rc_context(_RC):
        fig = _figure(figsize=(3.3 * len(columns) + 0.8, 3.2 * len(_VIEWS) + 0.6), dpi=100, layout="constrained")
        axes = fig.subplots(len(_VIEWS), len(columns), squeeze=False)
        for r, (view, a) in enumerate(_VIEWS):
            p, q = [c for c in range(3) if c != a]
            mid = shape[a] // 2
            extent = [coords[p][0] - h[p] / 2, coords[p][-1] + h[p] / 2, coords[q][0] - h[q] / 2, coords[q][-1] + h[q] / 2]

            def show(ax, vol, **kw):
                return ax.imshow(np.take(vol, mid, axis=a).T, origin="lower", extent=extent, aspect="equal", **kw)

            for c, col in enumerate(columns):
                ax = axes[r, c]
                if col == "grid":
                    if moving is not None:
                        show(ax, moving, cmap="gray", vmin=0, vmax=vmax)
                    _draw_grid(ax, coords[p], coords[q], np.take(disp[p], mid, axis=a), np.take(disp[q], mid, axis=a))
                    ax.set_xlim(extent[:2])
                    ax.set_ylim(extent[2:])
                    ax.set_aspect("equal")
                elif col == "uncertainty":
                    show(ax, target, cmap="gray", vmin=0, vmax=vmax)
                    im = show(ax, np.ma.masked_less_equal(unc, 0), cmap="inferno", alpha=0.7, vmin=0, vmax=umax)
                    fig.colorbar(im, ax=ax, shrink=0.8, label="RMS spread of samples (mm)")
                else:
                    show(ax, volumes[col], cmap="gray", vmin=0, vmax=vmax)
                if r == 0:
                    ax.set_title(titles.get(col, col))
                ax.set_xlabel(axis_label[p])
                ax.set_ylabel(f"{view}\n{axis_label[q]}" if c == 0 else axis_label[q])
        fig.suptitle(f"Example test pair {ex['pair']}".strip() + " (mid slices; displacements at true scale)")
    return fig


def _draw_grid(ax, cp, cq, dp, dq, lines: int = 24):
    """Grid lines of ``x -> x + d(x)`` in the slice plane (positions in mm), about ``lines`` per axis."""
    P, Q = np.meshgrid(cp, cq, indexing="ij")
    X, Y = P + dp, Q + dq
    step = max(1, round(max(len(cp), len(cq)) / lines))
    kw = dict(color="#ffd21f", lw=0.7, alpha=0.9)
    for i in range(0, len(cp), step):
        ax.plot(X[i, :], Y[i, :], **kw)
    for j in range(0, len(cq), step):
        ax.plot(X[:, j], Y[:, j], **kw)


def plot_accuracy_time(table: pd.DataFrame):
    """Mean pooled target overlap (marker) and worst pair (bar end) of each method against its median seconds per
    pair (log scale); methods without a time (affine) as a dashed line. ``table``: :func:`qs.report.tables.accuracy_time_table`."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(figsize=(8, 5.5), dpi=100, layout="constrained")
        ax = fig.subplots()
        rows = table[np.isfinite(table["target_overlap_mean"].to_numpy(float))]
        if rows.empty:
            _note(ax, "no labels: target overlap not computed")
            return fig
        timed = rows[np.isfinite(rows["median_s"].to_numpy(float)) & (rows["median_s"].to_numpy(float) > 0)]
        for i, r in enumerate(timed.itertuples()):
            low = r.target_overlap_mean - r.target_overlap_min
            ax.errorbar([r.median_s], [r.target_overlap_mean], yerr=[[low], [0]], fmt="o", ms=8, capsize=4,
                        color=_color(r.method, i), label=f"{r.method} ({r.threads} thread{'s' if str(r.threads) != '1' else ''})")
            ax.annotate(r.method, (r.median_s, r.target_overlap_mean), textcoords="offset points", xytext=(7, 5), fontsize=9)
        for r in rows[~rows["method"].isin(timed["method"])].itertuples():
            ax.axhline(r.target_overlap_mean, ls="--", lw=1, color=_color(r.method),
                       label=f"{r.method} (no time per pair; worst pair {r.target_overlap_min:.3f})")
        ax.set_xscale("log")
        ax.margins(x=0.12)  # room for the names of the outermost points
        ax.set_xlabel("median seconds per pair (log scale)")
        ax.set_ylabel("target overlap: mean over pairs (marker), worst pair (bar end)")
        ax.set_title(f"Accuracy against time, {int(rows['pairs'].max())} reference pairs")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    return fig


def plot_label_overlap(table: pd.DataFrame):
    """Per structure, each method's mean target overlap minus the reference's (the strongest SyN setting), structures
    sorted by the reference's overlap. ``table``: :func:`qs.report.tables.label_overlap_table`."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        ref = str(table["reference"].iloc[0]) if len(table) else ""
        labels = list(dict.fromkeys(table["label"])) if ref else []
        fig = _figure(figsize=(10, max(4.0, 0.22 * len(labels) + 1.5)), dpi=100, layout="constrained")
        ax = fig.subplots()
        if not labels:
            _note(ax, "no labels or no reference method: per-label overlap not drawn")
            return fig
        ref_rows = table[table["method"] == ref].set_index("label")
        labels = sorted(labels, key=lambda lab: ref_rows["target_overlap_mean"].get(lab, np.nan))
        y = {lab: i for i, lab in enumerate(labels)}
        names = table.drop_duplicates("label").set_index("label")["name"]
        methods = [m for m in report_order(table["method"]) if m != ref]
        for i, m in enumerate(methods):
            rows = table[table["method"] == m]
            ax.plot(rows["vs_reference"], rows["label"].map(y), "o", ms=4, color=_color(m, i), label=m, alpha=0.85)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels([f"{names.get(lab) or lab} ({ref_rows['target_overlap_mean'].get(lab, np.nan):.2f})"
                            for lab in labels], fontsize=7)
        ax.set_xlabel(f"mean target overlap minus {ref}'s (per structure, over pairs)")
        ax.set_title(f"Per structure against {ref} (in brackets: {ref}'s overlap)")
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig
