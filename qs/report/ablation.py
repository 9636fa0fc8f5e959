"""The paper's variant table as a workflow target (``snakemake ablation``): variant specs, names, the table.

Yang et al. (2017, Table 2) compare what the network predicts (momentum,
velocity, deformation), the patch stride (5, 14), the training length (10,
40 epochs), deterministic vs probabilistic (MC dropout, 50 samples) networks
and the correction step. A *variant* (config ``ablation.variants``) is one
such row: ``field``, ``stride`` (voxels, training and prediction), ``epochs``,
``samples`` (1: deterministic; > 1: MC-dropout mean of that many samples) and
``correction`` (one round of the correction network, momentum and velocity
only). Variants are trained from the run's LDDMM momenta of its training
pairs and evaluated on its reference pairs against LDDMM, as the paper
predicts: the training stride, no mirror images, one correction round.

Variants that differ only in ``samples`` or ``correction`` share one
prediction network (:func:`model_key`); every variant of a field and stride
shares one patch set (:func:`patch_key`).

:func:`ablation_table` pools the per-pair evaluations (:func:`qs.report.pair.evaluate_pair`,
the variants as methods) into one row per variant: the seven percentiles of
the deformation error (mm), ``detj_pos_pct`` (percent of pairs with det J > 0
everywhere), the mean target overlap, training seconds (the networks'
epochs, from their ``loss.tsv``) and median prediction seconds per pair,
with the paper's row beside it where the paper has one.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..fields import FIELDS, is_shot
from ..io import QsInputError
from .paper import PAPER_DEFORMATION_ERROR
from .tables import deformation_error_table, mean_overlap_table, pool_errors

#: defaults of a variant's keys (``field`` is required)
VARIANT_DEFAULTS = {"stride": 14, "epochs": 10, "samples": 1, "correction": False}
#: columns of ``ablation.tsv``
ABLATION_COLUMNS = ["variant", "field", "stride", "epochs", "network", "correction", "p0.3", "p5", "p25", "p50",
                    "p75", "p95", "p99.7", "detj_pos_pct", "target_overlap", "train_s", "predict_s", "pairs",
                    "paper_row", "paper_p50", "paper_detj_pos"]


def variant_name(v: dict) -> str:
    """A variant's name (folder and table name): ``{field}-stride{S}-{E}epochs``, ``-mc{N}`` for N samples,
    ``-corrected`` with correction."""
    name = f"{v['field']}-stride{v['stride']}-{v['epochs']}epochs"
    if v["samples"] > 1:
        name += f"-mc{v['samples']}"
    if v["correction"]:
        name += "-corrected"
    return name


def model_key(v: dict) -> str:
    """The prediction network a variant uses (shared by variants that differ only in samples or correction)."""
    return f"{v['field']}-stride{v['stride']}-{v['epochs']}epochs"


def patch_key(v: dict) -> str:
    """The training patch set a variant's network learns from (one per field and stride)."""
    return f"{v['field']}-stride{v['stride']}"


def variants(config: dict) -> dict[str, dict]:
    """Name -> variant (defaults filled) of ``config['ablation']['variants']``, checked against the config.

    Refused with :class:`QsInputError` naming the variant: an unknown key or
    field, a stride outside 1..``train.patch``, a correction of a deformation,
    samples > 1 with ``train.dropout`` 0, the same variant twice.
    """
    out = {}
    patch, dropout = int(config["train"]["patch"]), float(config["train"]["dropout"])
    for n, given in enumerate(config.get("ablation", {}).get("variants", [])):
        where = f"config: ablation.variants[{n}]"
        if not isinstance(given, dict) or "field" not in given:
            raise QsInputError(f"{where}: a variant is a mapping with at least a field, got {given!r}")
        unknown = set(given) - {"field", *VARIANT_DEFAULTS}
        if unknown:
            raise QsInputError(f"{where}: unknown keys {sorted(unknown)} (known: field, {', '.join(VARIANT_DEFAULTS)})")
        v = {"field": given["field"], **VARIANT_DEFAULTS, **{k: given[k] for k in VARIANT_DEFAULTS if k in given}}
        if v["field"] not in FIELDS:
            raise QsInputError(f"{where}: field must be one of {list(FIELDS)}, got {v['field']!r}")
        for key in ("stride", "epochs", "samples"):
            if isinstance(v[key], bool) or not isinstance(v[key], int) or v[key] < 1:
                raise QsInputError(f"{where}: {key} must be a positive integer, got {v[key]!r}")
        if not isinstance(v["correction"], bool):
            raise QsInputError(f"{where}: correction must be true or false, got {v['correction']!r}")
        if v["stride"] > patch:
            raise QsInputError(f"{where}: stride {v['stride']} is larger than the patch size {patch} (train.patch)")
        if v["correction"] and not is_shot(v["field"]):
            raise QsInputError(f"{where}: a deformation has no correction network; set correction: false")
        if v["samples"] > 1 and dropout <= 0:
            raise QsInputError(f"{where}: samples {v['samples']} needs MC dropout, but train.dropout is 0")
        name = variant_name(v)
        if name in out:
            raise QsInputError(f"{where}: the variant {name} is listed twice")
        out[name] = v
    return out


def paper_row(v: dict) -> str | None:
    """The paper's row of a variant (Table 2 names), or None where the paper has no such row."""
    name = f"{'P' if v['samples'] > 1 else 'D'}, {v['field']}, stride {v['stride']}"
    if v["epochs"] == 40:
        name += ", 40 epochs"
    if v["samples"] > 1:
        name += ", 50 samples"
    if v["correction"]:
        name += " + correction"
    return name if name in set(PAPER_DEFORMATION_ERROR["method"]) else None


def ablation_table(results: list[dict], specs: dict[str, dict], train_seconds: dict[str, float]) -> pd.DataFrame:
    """One row per variant (and ``affine`` first) from the per-pair results (:func:`qs.report.pair.load_pair_results`).

    ``specs``: name -> variant (:func:`variants`); ``train_seconds``: name ->
    seconds of training its networks. Percentiles in mm over all pairs'
    voxels pooled; ``predict_s`` the median over pairs of the prediction's seconds.
    """
    pooled = pool_errors([r["errors"] for r in results])
    detj = pd.concat([r["detj"] for r in results], ignore_index=True)
    overlap = pd.concat([r["overlap"] for r in results], ignore_index=True)
    timing = pd.concat([r["timing"] for r in results], ignore_index=True)
    missing = [name for name in specs if name not in pooled]
    if missing:
        raise QsInputError(f"ablation: no evaluation of the variants {missing} (run qs evaluate-pair with them)")
    errors = deformation_error_table(pooled, detj).set_index("method")
    mean_to = (mean_overlap_table(overlap).set_index("method")["target_overlap_mean"] if len(overlap)
               else pd.Series(dtype=float))
    paper = PAPER_DEFORMATION_ERROR.set_index("method")
    rows = []
    for name, v in {"affine": None, **specs}.items():
        row = {"variant": name, **errors.loc[name].to_dict(), "target_overlap": mean_to.get(name, math.nan),
               "pairs": len(results)}
        if v is None:
            row.update(field="", stride="", epochs="", network="", correction="", train_s=math.nan,
                       predict_s=math.nan, paper_row="affine only")
        else:
            row.update(field=v["field"], stride=v["stride"], epochs=v["epochs"],
                       network=f"P ({v['samples']} samples)" if v["samples"] > 1 else "D",
                       correction="yes" if v["correction"] else "no", train_s=float(train_seconds.get(name, math.nan)),
                       predict_s=float(timing.loc[timing["method"] == name, "seconds"].median()),
                       paper_row=paper_row(v) or "")
        if row["paper_row"]:
            row["paper_p50"] = float(paper.loc[row["paper_row"], "p50"])
            row["paper_detj_pos"] = paper.loc[row["paper_row"], "detj_pos"]
        else:
            row["paper_p50"], row["paper_detj_pos"] = math.nan, ""
        rows.append(row)
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def plot_ablation(table: pd.DataFrame):
    """Our median deformation error per variant beside the paper's row (log scale, mm), and det J > 0 (% of pairs:
    bars ours, squares the paper's)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(table)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 0.45 * n + 1.8), dpi=100, sharey=True,
                                 gridspec_kw={"width_ratios": [3, 1]})
    y = np.arange(n)[::-1]
    p50 = table["p50"].to_numpy(float)
    ax.errorbar(p50, y + 0.15, xerr=[p50 - table["p25"].to_numpy(float), table["p75"].to_numpy(float) - p50],
                fmt="o", color="C0", capsize=3, label="ours: p50, p25-p75 (this run's reference pairs)")
    ax.plot(table["paper_p50"].astype(float), y - 0.15, "s", color="C1", label="paper: p50 (OASIS, 1 mm)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_yticks(y, [f"{v}\n[{p}]" if p else f"{v}\n[no paper row]" for v, p in zip(table["variant"], table["paper_row"])],
                  fontsize=7)
    ax.set_xlabel("deformation error vs LDDMM (mm, log scale)")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    pos = table["detj_pos_pct"].astype(float)
    bx.barh(y, pos.fillna(0), color=["0.7" if math.isnan(p) else ("C2" if p == 100 else "C3") for p in pos])
    paper_pos = pd.to_numeric(table["paper_detj_pos"].astype(str).str.rstrip("%"), errors="coerce")
    bx.plot(paper_pos, y - 0.15, "s", color="C1")
    bx.set_xlim(-5, 105)
    bx.set_xlabel("pairs with det J > 0 (%)")
    fig.suptitle("Ablation: the paper's variants on this run's reference pairs")
    fig.tight_layout()
    return fig


def write_ablation(pair_dirs, specs: dict[str, dict], loss_tsvs: dict[str, list], out_dir) -> dict:
    """``qs ablation``: ``ablation.tsv`` and ``ablation.png`` in ``out_dir`` from the evaluated pair folders.

    ``loss_tsvs``: variant name -> the ``loss.tsv`` files of the networks it
    uses (their ``seconds`` summed are its training time; NaN without any). Returns the paths.
    """
    from pathlib import Path

    from .figures import save_figure
    from .pair import load_pair_results
    from .tsv import read_tsv, write_tsv

    if not pair_dirs:
        raise QsInputError("ablation: no evaluated pairs given")
    results = [load_pair_results(p) for p in pair_dirs]
    seconds = {name: sum(float(read_tsv(t, ["epoch", "seconds"])["seconds"].sum()) for t in files)
               for name, files in loss_tsvs.items() if files}
    table = ablation_table(results, specs, seconds)
    out_dir = Path(out_dir)
    return {"tsv": write_tsv(table, out_dir / "ablation.tsv", float_format="%.4f"),
            "png": save_figure(plot_ablation(table), out_dir / "ablation.png")}
