"""The text of the report's ``summary.md``: our tables beside the paper's, time, det J, training, provenance.

Deformation errors in mm, times in seconds; numbers formatted as in the tables' format specs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .methods import PREDICTED, report_order
from .paper import PAPER_DEFORMATION_ERROR, PAPER_TARGET_OVERLAP, paper_rows
from .tables import detj_table, mean_overlap_table, method_settings, pair_overlap_table, timing_table


def _fmt(v, spec=".4f") -> str:
    """A table cell: ``n/a`` for None or NaN, ``yes``/``no``, integers as such, floats with ``spec``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return format(float(v), spec)
    return str(v).replace("|", "\\|")


def markdown_table(df: pd.DataFrame, formats: dict | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (``formats``: column -> format spec)."""
    formats = formats or {}
    lines = ["| " + " | ".join(str(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, formats.get(c, ".4f")) for c, v in zip(df.columns, row)) + " |")
    return "\n".join(lines)


def summary_markdown(deformation, overlap, timing, detj, *, losses=None, n_pairs=None, paper_table=True, field="momentum",
                     provenance=None, affine_qc=None, exclude_labels=(), accuracy=None, per_label=None) -> str:
    """The text of ``summary.md`` from the aggregated tables (``affine_qc``: :func:`qs.report.qc.affine_qc_table`;
    ``accuracy``, ``per_label``: :func:`qs.report.tables.accuracy_time_table`, ``label_overlap_table``)."""
    pairs = sorted(set(timing["pair"]) | set(detj["pair"]))
    n_pairs = n_pairs if n_pairs is not None else len(pairs)
    s = ["# Quicksilver: evaluation on the test pairs", ""]
    s += [f"Test pairs: {n_pairs}.", "",
          "**What is compared.** Our numbers come from this run's cohort (`cohort/subjects.tsv`: a subject "
          "sheet, a BIDS folder or the built-in demo cohort of synthetic deformations of the MNI ICBM152 "
          "template), on the working grid of the config, "
          "with our LDDMM optimization as the reference and our networks trained on our training pairs. "
          "The paper's numbers (Yang et al., NeuroImage 2017) are for 1 mm OASIS images (deformation error) "
          "and the LPBA40, IBSR18, CUMC12 and MGH10 label sets (target overlap), with networks trained on "
          "OASIS. Cohort, resolution, number of training pairs and LDDMM settings differ, so absolute numbers "
          "are not expected to agree; compare the ordering and the ratios (prediction vs affine, correction vs "
          "prediction), and det J positivity.", ""]
    s += ["**Label set.** " + (f"Labels {', '.join(map(str, exclude_labels))} are left out of the evaluation "
                               "(`evaluate.exclude_labels`): their voxels count as background in the target overlap, "
                               "Dice and the brain mask of the deformation error." if len(exclude_labels) else
                               "Every label of the target is evaluated (`evaluate.exclude_labels` is empty)."), ""]
    if affine_qc is not None and len(affine_qc):
        flagged = affine_qc[affine_qc["flagged"]]
        s += ["## Affine pre-alignment", "",
              f"{len(affine_qc)} subjects aligned to the atlas (`affine_qc.tsv`; each subject's `*_qc.png` under "
              "`preprocessed/`). NCC with the atlas inside the atlas brain mask where the subject's image has "
              "content; `atlas_mask_coverage`: the share of the atlas brain mask the subject's image covers (a skull "
              "strip without cerebellum: about 0.87); determinant and scales of the affine (atlas point -> subject "
              "point, > 1: the subject is larger); `reoriented`: the scan was stored rotated against its header and "
              "the orientation search turned it. A subject is flagged when a measure lies beyond 3.5 robust standard "
              "deviations of the cohort's own spread.", ""]
        s.append(f"**Flagged: {len(flagged)}** " + ("(none)." if flagged.empty else
                 "- " + "; ".join(f"`{r.subject}`: {r.flags}" for r in flagged.itertuples())))
        cols = ["subject", "ncc_with_atlas", "atlas_mask_coverage", "affine_determinant", "scale_min", "scale_max",
                "rotation_deg", "reoriented", "flagged"]
        shown = pd.concat([flagged, affine_qc[~affine_qc["flagged"]]])[cols]
        s += ["", markdown_table(shown, {"ncc_with_atlas": ".3f", "atlas_mask_coverage": ".3f",
                                          "affine_determinant": ".3f", "scale_min": ".3f", "scale_max": ".3f",
                                          "rotation_deg": ".1f"}), ""]

    s += ["## Deformation error against LDDMM optimization", "",
          "Norm of the difference between each method's and LDDMM's displacement of phi_1^{-1}, in mm, at "
          "every voxel of the target brain mask, percentiles over all test pairs' voxels pooled. "
          "`detj_pos_pct`: percent of test pairs whose transform has det J > 0 at every voxel (n/a for "
          "affine, the identity on the working grid).", "", "### Ours", ""]
    if len(deformation):
        s.append(markdown_table(deformation, {"detj_pos_pct": ".0f"}))
    else:
        s.append("No deformation errors were computed.")
    if paper_table:
        s += ["", "### Paper (Yang et al. 2017, Table: OASIS, 1 mm)", "",
              "D = deterministic network, P = probabilistic (MC dropout). The rows closest to ours: "
              + ", ".join(f"`{m}` ~ \"{r}\"" for m, r in paper_rows(field).items())
              + (f" (our networks learn the {field}; the paper has no corrected or MC {field} rows)"
                 if field != "momentum" else "") + ".", "",
              markdown_table(PAPER_DEFORMATION_ERROR)]
        ours = deformation.set_index("method")
        ratio_rows = []
        for m, r in paper_rows(field).items():
            if m in ours.index:
                paper = PAPER_DEFORMATION_ERROR.set_index("method").loc[r]
                ratio_rows.append({"method": m, "paper row": r, "our p50 (mm)": ours.loc[m, "p50"],
                                   "paper p50 (mm)": paper["p50"], "our p95 (mm)": ours.loc[m, "p95"],
                                   "paper p95 (mm)": paper["p95"]})
        if ratio_rows:
            s += ["", "Side by side (median and 95th percentile):", "", markdown_table(pd.DataFrame(ratio_rows))]

    s += ["", "## Target overlap", "",
          "Klein et al. (2009) target overlap `sum_r |S_r ∩ T_r| / sum_r |T_r|` pooled over the target's "
          "labels per pair (the `all` rows of `target_overlap.tsv`), then averaged over pairs.", ""]
    mo = mean_overlap_table(overlap)
    s.append(markdown_table(mo, {"pairs": "d"}) if len(mo) else "No labels: target overlap not computed.")
    if paper_table:
        s += ["", "Paper (mean over pairs, for reference; other data sets and label sets):", "",
              markdown_table(PAPER_TARGET_OVERLAP, {c: ".3f" for c in PAPER_TARGET_OVERLAP.columns})]

    if accuracy is not None and len(accuracy):
        ref = next((r for r in accuracy["reference"] if r), "")
        s += ["", "## Accuracy against time", "",
              "Mean pooled target overlap over the reference pairs, the worst pair, the median seconds per pair and "
              "the threads each method ran with (`accuracy_time.tsv`, `accuracy_time.png`)"
              + (f"; against `{ref}` (the strongest SyN setting of the run, else LDDMM), per pair: mean, worst and "
                 "best difference and the pairs at or above it." if ref else "."), "",
              markdown_table(accuracy, {"median_s": ".1f", "pairs": "d", "pairs_at_or_above_reference": "d",
                                        "vs_reference_mean": "+.4f", "vs_reference_min": "+.4f",
                                        "vs_reference_max": "+.4f"})]
        most = int(accuracy["pairs"].max())
        fewer = [f"`{r.method}` on {int(r.pairs)}" for r in accuracy.itertuples() if 0 < r.pairs < most]
        if fewer:
            s += ["", f"Run on fewer of the {most} reference pairs (`evaluate.syn_max_pairs`): {', '.join(fewer)}; "
                  "every difference against a method is taken on the pairs both ran on."]
        per_pair = pair_overlap_table(overlap)
        if len(per_pair):
            s += ["", "Per pair (pooled target overlap; `A - B`: the difference):", "",
                  markdown_table(per_pair, {c: "+.4f" for c in per_pair.columns if " - " in str(c)})]
    if per_label is not None and len(per_label) and per_label["reference"].iloc[0]:
        ref = per_label["reference"].iloc[0]
        s += ["", "## Per structure", "",
              f"Mean target overlap per structure against `{ref}` (`label_overlap.tsv`, `label_overlap.png`): for "
              "each method, the three structures furthest behind it and the three furthest ahead (or least behind).", ""]
        rows = []
        for m in report_order(per_label["method"]):
            g = per_label[(per_label["method"] == m)].dropna(subset=["vs_reference"]).sort_values("vs_reference")
            if m == ref or g.empty:
                continue
            name = lambda r: f"{r['name'] or r['label']} ({r['vs_reference']:+.3f})"  # noqa: E731
            rows.append({"method": m, "structures at or above": f"{int((g['vs_reference'] >= 0).sum())} of {len(g)}",
                         "furthest behind": ", ".join(name(r) for _, r in g.head(3).iterrows()),
                         "furthest ahead": ", ".join(name(r) for _, r in g.tail(3).iloc[::-1].iterrows())})
        s.append(markdown_table(pd.DataFrame(rows, columns=["method", "structures at or above", "furthest behind",
                                                            "furthest ahead"])))

    settings = method_settings(timing)
    if settings:
        s += ["", "## SyN baselines", "",
              "ANTs SyN on the same affinely aligned pairs (docs/syn.md), with the settings their summaries state:", ""]
        s += [f"- `{m}`: {text}" for m, text in settings.items()]

    s += ["", "## Time per pair", ""]
    tt = timing_table(timing)
    s.append(markdown_table(tt, {"median_s": ".2f", "mean_s": ".2f", "speedup_vs_lddmm": ".1f"}))
    for m in PREDICTED:
        row = tt[tt["method"] == m]
        if len(row) and not math.isnan(float(row["speedup_vs_lddmm"].iloc[0])):
            r = row.iloc[0]
            ref = tt[tt["method"] == "lddmm"].iloc[0]
            speed = (f"{r['speedup_vs_lddmm']:.1f}x faster than" if r["speedup_vs_lddmm"] >= 1 else
                     f"{1 / r['speedup_vs_lddmm']:.1f}x slower than")
            s.append(f"\n`{m}` is {speed} LDDMM optimization (median "
                     f"{r['median_s']:.2f} s on {r['device']} vs {ref['median_s']:.2f} s on {ref['device']}).")
    if paper_table:
        s += ["", "Paper: about 11 s per 1 mm 3D pair for prediction on one GPU; the precursor paper reports a "
              "66x speed-up over GPU LDDMM optimization in 3D. Our LDDMM runs a fixed number of iterations "
              "(see the config), so the speed-up depends on that setting and on the devices above."]

    s += ["", "## Jacobian determinant", "",
          "det J of phi_1^{-1}, computed from each warp at every voxel of the grid (central differences).", ""]
    s.append(markdown_table(detj_table(detj), {"detj_pos_pct": ".0f", "detj_min": ".4g", "detj_max": ".4g"}))
    folds = detj[~detj["detj_pos"].astype(bool)]
    if len(folds):
        where = "; ".join(f"`{r.method}` on {r.pair} ({int(r.detj_nonpos_voxels)} voxels, min {r.detj_min:.3g})"
                          for r in folds.itertuples())
        s += ["", f"**Folds** (det J <= 0 somewhere): {where}. Every method but affine is shot from a momentum, "
              "a diffeomorphism in the continuum; a fold is where the energy let the momentum's finest detail grow "
              "beyond what the shooting on the working grid resolves: a larger `lddmm.sigma` (the kernel's norm "
              "binds harder) or wider `lddmm.kernel_scales` remove it; more RK4 steps do not (docs/learning.md). "
              "The voxels: each pair's warp in its method's folder."]

    if losses:
        s += ["", "## Training", "",
              "Final epoch of each network (mean |error| of the field it learns, m0 or v0 = K m0, in its units); "
              "`val_vs_zero` is the validation L1 over that of predicting zero: 1 means the network learned "
              "nothing (see docs/learning.md).", ""]
        rows = [{"model": k, "epochs": int(v["epoch"].max()), "train_l1": float(v["train_l1"].iloc[-1]),
                 "val_l1": float(v["val_l1"].iloc[-1]), "val_zero_l1": float(v["val_zero_l1"].iloc[-1]),
                 "val_vs_zero": float(v["val_l1"].iloc[-1]) / float(v["val_zero_l1"].iloc[-1])}
                for k, v in losses.items() if len(v)]
        cols = ["model", "epochs", "train_l1", "val_l1", "val_zero_l1", "val_vs_zero"]
        s.append(markdown_table(pd.DataFrame(rows, columns=cols),
                                {"train_l1": ".4g", "val_l1": ".4g", "val_zero_l1": ".4g", "val_vs_zero": ".3f"}))

    s += ["", "## Figures", "",
          "- `deformation_error.png`: distribution of the deformation error per method (ours and the paper's percentiles).",
          "- `target_overlap.png`: target overlap per method (pooled per pair, and per label).",
          "- `example_pair.png`: one test pair: moving, warped moving, target, deformed grid, uncertainty.",
          "- `loss.png`: training and validation L1 per epoch.",
          "- `accuracy_time.png`: mean target overlap (and the worst pair) against median seconds per pair, every method and SyN setting.",
          "- `label_overlap.png`: per structure, each method's target overlap against the strongest SyN setting's."]
    if provenance:
        s += ["", "## Provenance", ""]
        s += [f"- {k}: {_fmt(v)}" for k, v in provenance.items() if not isinstance(v, pd.DataFrame)]
        for k, v in provenance.items():
            if isinstance(v, pd.DataFrame):
                s += ["", f"{k[:1].upper()}{k[1:]}:", "", markdown_table(v)]
    return "\n".join(s) + "\n"
