"""Evaluation of the test pairs against LDDMM optimization, and the report (tables, figures, summary).

Two steps, each a function on files and a ``qs`` subcommand:

* :func:`evaluate_pair` (``qs evaluate-pair``): one test pair. Writes into its
  folder ``deformation_error.npz`` (per-voxel error in mm of each method's
  ``phi_1^{-1}`` displacement against LDDMM's, over the target brain mask),
  ``detj.tsv``, ``overlap.tsv`` and ``timing.tsv``.
* :func:`build_report` (``qs report``): all test pairs. Writes the contract
  tables ``deformation_error.tsv``, ``target_overlap.tsv``, ``timing.tsv``
  (see ``DESIGN.md``), ``detj.tsv`` (all pairs), the figures
  ``target_overlap.png``, ``deformation_error.png``, ``example_pair.png``,
  ``loss.png`` and ``summary.md``.

Method names in the tables: ``affine``, ``lddmm``, ``syn``, ``syn-quick``,
``predict``, ``predict+correct``, ``predict-mc`` (the folder of
``predict+correct`` is ``predict-correct``; :func:`method_name` maps one to
the other). ``syn`` and ``syn-quick`` are the ANTs SyN baselines
(:mod:`qs.syn`; docs/syn.md).

What is measured:

* Deformation error: ``|d_method(x) - d_lddmm(x)|`` in mm at every voxel ``x``
  of the target brain mask (target labels > 0; the given mask when the cohort
  has no labels), ``d`` the displacement of ``phi_1^{-1}`` on the target grid
  read from ``warp.nii.gz``. ``affine`` is the identity on the working grid
  (all images are affinely pre-aligned), so its error is ``|d_lddmm|``.
  Percentiles pool the voxels of all test pairs. SyN is not in this table:
  its transform is ANTs' own (``[warp, affine.mat]``) and the paper compares
  only the predicted transforms with LDDMM.
* det J: of each transform's ``phi_1^{-1}``, computed here from the warp
  (not read from the summaries) at every voxel of the grid.
  ``detj_pos_pct`` = percent of test pairs whose det J > 0 everywhere. It is
  left empty (NaN) for ``affine``, as the paper's "n/a": the identity does
  not fold by construction.
* Target overlap (Klein et al. 2009) and Dice: :func:`qs.evaluate.overlap_rows`.
* Timing: ``seconds`` and ``device`` from each method's ``summary.json``; the
  per-pair ``timing.tsv`` also keeps the SyN settings the summaries state
  (``description``), which ``summary.md`` lists.

Figures are drawn with :class:`matplotlib.figure.Figure` (no pyplot state).
Every figure is always written (a note in the panel when its data are
missing), so that the workflow's outputs exist for every cohort.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .evaluate import (
    OVERLAP_COLUMNS,
    PERCENTILES,
    detj_summary,
    displacement_error_mm,
    error_percentiles,
    overlap_rows,
)
from .fields import ERROR_LABEL, check_field
from .io import QsInputError, atomic_path, check_same_grid, load_image, load_labels, spacing, write_text
from .transforms import read_ants_displacement

#: table names in report order
METHOD_ORDER = ("affine", "lddmm", "syn", "syn-quick", "predict", "predict+correct", "predict-mc")
#: the ANTs SyN baselines (:mod:`qs.syn`): CPU, their own transform chain, not compared with LDDMM's displacement
SYN_METHODS = ("syn", "syn-quick")
#: methods whose transform is compared with LDDMM's (besides ``affine``)
PREDICTED = ("predict", "predict+correct", "predict-mc")
#: folder name of a method where it differs from its table name
_FOLDER_NAMES = {"predict+correct": "predict-correct"}

PERCENTILE_COLUMNS = [f"p{p:g}" for p in PERCENTILES]
DEFORMATION_COLUMNS = ["method", *PERCENTILE_COLUMNS, "detj_pos_pct"]
DETJ_COLUMNS = ["pair", "method", "detj_min", "detj_max", "detj_pos", "detj_nonpos_voxels"]
TIMING_COLUMNS = ["pair", "method", "seconds", "device", "threads"]
#: the per-pair ``timing.tsv`` of :func:`evaluate_pair`: also the settings a summary states (SyN's ``description``)
PAIR_TIMING_COLUMNS = [*TIMING_COLUMNS, "settings"]

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

    The paper's velocity model has only a plain prediction row; corrected and
    MC-dropout velocity predictions are set beside its momentum rows.
    """
    rows = dict(PAPER_ROW_OF)
    if check_field(field) == "velocity":
        rows["predict"] = "D, velocity, stride 14"
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

_TIME_KEYS = ("seconds", "time", "time_s", "wall_seconds", "elapsed")


def method_name(name: str) -> str:
    """Table name of a method given its table or folder name (``predict-correct`` -> ``predict+correct``)."""
    return {v: k for k, v in _FOLDER_NAMES.items()}.get(name, name)


def method_folder(name: str) -> str:
    """Folder name of a method (``predict+correct`` -> ``predict-correct``)."""
    return _FOLDER_NAMES.get(name, name)


def _order(methods) -> list[str]:
    """Methods in report order, unknown names after the known ones (alphabetical)."""
    methods = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_ORDER)


# --------------------------------------------------------------------------- per pair


def read_summary(folder, method: str) -> dict:
    """``folder/summary.json`` as a dict; :class:`QsInputError` naming the file if missing or unreadable."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise QsInputError(f"{path}: summary of {method} does not exist")
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise QsInputError(f"{path}: cannot read the summary of {method} as JSON ({exc})") from exc
    if not isinstance(summary, dict):
        raise QsInputError(f"{path}: summary of {method} is not a JSON object")
    return summary


def timing_row(pair: str, method: str, summary: dict, *, source="summary.json") -> dict:
    """A ``timing.tsv`` row from a summary: seconds under ``seconds`` (or ``time``...), ``device``, ``threads``, ``settings``.

    SyN runs on the CPU (ANTs) and its summary has no device; a summary
    without a time gives NaN seconds and a warning. ``threads`` is the CPU
    thread count the method ran with (torch's, or ITK's for SyN; 0 when the
    summary does not say): CPU times on a 2-core machine depend on it.
    ``settings``: the summary's ``description`` (SyN's settings in words), else "".
    """
    seconds = next((summary[k] for k in _TIME_KEYS if isinstance(summary.get(k), (int, float))), None)
    if seconds is None:
        warnings.warn(f"{source}: no time ({', '.join(_TIME_KEYS)}) for {method} of {pair}", stacklevel=2)
        seconds = math.nan
    device = summary.get("device") or ("cpu" if method in SYN_METHODS else "unknown")
    threads = summary.get("threads")
    threads = int(threads) if isinstance(threads, (int, float)) and not isinstance(threads, bool) else 0
    settings = summary.get("description")
    return {"pair": pair, "method": method, "seconds": float(seconds), "device": str(device), "threads": threads,
            "settings": settings if isinstance(settings, str) else ""}


def _grid_image(shape, affine) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.zeros(shape, np.uint8), affine)


def _read_warp(path, grid, grid_name) -> np.ndarray:
    """The ``(3, I, J, K)`` displacement (mm) of an ANTs warp, checked to lie on ``grid``."""
    disp, affine = read_ants_displacement(path)
    check_same_grid(grid, _grid_image(disp.shape[1:], affine), grid_name, path)
    return disp


def evaluate_pair(pair: str, out_dir, *, lddmm_dir, method_dirs: dict, target_labels=None, moving_labels=None,
                  mask=None) -> dict[str, Path]:
    """Evaluate one test pair against LDDMM optimization; write the four per-pair files into ``out_dir``.

    ``method_dirs`` maps method names (table or folder names: ``syn``, ``syn-quick``,
    ``predict``, ``predict+correct`` or ``predict-correct``, ``predict-mc``...)
    to their result folders. Every method except the SyN ones must have a
    ``warp.nii.gz`` on LDDMM's grid. ``target_labels`` (> 0) define the brain
    mask; without them ``mask`` (a NIfTI on the same grid) is used. The
    affine method's warped labels are the ``moving_labels``.

    Returns the paths of ``deformation_error.npz``, ``detj.tsv``,
    ``overlap.tsv`` and ``timing.tsv``.
    """
    from .lddmm.jacobian import jacobian_determinant
    import torch

    lddmm_dir, out_dir = Path(lddmm_dir), Path(out_dir)
    methods = {}
    for name, folder in method_dirs.items():
        m = method_name(name)
        if m in ("affine", "lddmm"):
            raise QsInputError(f"evaluate_pair: '{name}' is not a method folder to compare (affine and lddmm are built in)")
        if m in methods:
            raise QsInputError(f"evaluate_pair: method '{m}' given twice")
        methods[m] = Path(folder)

    ref_disp, grid_affine = read_ants_displacement(lddmm_dir / "warp.nii.gz")
    grid_name = lddmm_dir / "warp.nii.gz"
    grid = _grid_image(ref_disp.shape[1:], grid_affine)
    target = None
    if target_labels is not None:
        tl = load_labels(target_labels)
        check_same_grid(grid, tl, grid_name, target_labels)
        target = np.asarray(tl.dataobj)
        brain = target > 0
    elif mask is not None:
        mi = load_image(mask, what="brain mask")
        check_same_grid(grid, mi, grid_name, mask)
        brain = np.asarray(mi.dataobj) > 0
        if not brain.any():
            raise QsInputError(f"{mask}: brain mask is empty")
    else:
        raise QsInputError(f"evaluate_pair {pair}: give target labels or a brain mask (the voxels where the error is measured)")
    h = spacing(grid)

    def detj_row(method, disp):
        detj = jacobian_determinant(torch.from_numpy(np.asarray(disp, np.float64)), h).numpy()
        return {"pair": pair, "method": method, **detj_summary(detj)}

    ref_vec = np.moveaxis(ref_disp, 0, -1)
    errors = {"affine": displacement_error_mm(np.zeros_like(ref_vec), ref_vec, brain).astype(np.float32)}
    detj_rows = [detj_row("lddmm", ref_disp)]
    for m in _order(methods):
        if m in SYN_METHODS:
            continue
        disp = _read_warp(methods[m] / "warp.nii.gz", grid, grid_name)
        errors[m] = displacement_error_mm(np.moveaxis(disp, 0, -1), ref_vec, brain).astype(np.float32)
        detj_rows.append(detj_row(m, disp))

    rows = []
    if target is not None:
        sources = {"lddmm": lddmm_dir, **methods}
        sources = {m: Path(d) / "warped_labels.nii.gz" for m, d in sources.items()}
        sources = {m: path for m, path in sources.items() if path.is_file()}
        if moving_labels is not None:
            sources["affine"] = Path(moving_labels)  # load_labels names it if it is missing
        for m in _order(sources):
            path = sources[m]
            warped = load_labels(path)
            check_same_grid(tl, warped, target_labels, path)
            rows += overlap_rows(pair, m, np.asarray(warped.dataobj), target)

    timing = [timing_row(pair, "lddmm", read_summary(lddmm_dir, "lddmm"), source=lddmm_dir / "summary.json")]
    timing += [timing_row(pair, m, read_summary(methods[m], m), source=methods[m] / "summary.json") for m in _order(methods)]

    out_dir.mkdir(parents=True, exist_ok=True)
    out = {"deformation_error": out_dir / "deformation_error.npz", "detj": out_dir / "detj.tsv",
           "overlap": out_dir / "overlap.tsv", "timing": out_dir / "timing.tsv"}
    with atomic_path(out["deformation_error"]) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **errors)
    _write_tsv(pd.DataFrame(detj_rows, columns=DETJ_COLUMNS), out["detj"])
    _write_tsv(pd.DataFrame(rows, columns=OVERLAP_COLUMNS), out["overlap"], float_format="%.6f")
    _write_tsv(pd.DataFrame(timing, columns=PAIR_TIMING_COLUMNS), out["timing"], float_format="%.3f")
    return out


def _write_tsv(df: pd.DataFrame, path, float_format="%.6g") -> Path:
    return write_text(df.to_csv(sep="\t", index=False, float_format=float_format, na_rep="NaN"), path)


def _read_tsv(path, columns, optional=()) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise QsInputError(f"{path}: file does not exist (run qs evaluate-pair first)")
    try:
        df = pd.read_csv(path, sep="\t", dtype={"pair": str, "label": str, "method": str, "device": str},
                         keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise QsInputError(f"{path}: cannot read as TSV ({exc})") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise QsInputError(f"{path}: missing columns {missing}")
    for c in optional:
        if c not in df.columns:
            df[c] = math.nan
    return df[list(columns) + list(optional)]


# --------------------------------------------------------------------------- aggregation (pure)


def pool_errors(per_pair: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Method -> the error samples of all pairs concatenated (float32), methods in report order."""
    methods = _order(m for errors in per_pair for m in errors)
    return {m: np.concatenate([np.asarray(e[m], np.float32).ravel() for e in per_pair if m in e]) for m in methods}


def deformation_error_table(pooled: dict[str, np.ndarray], detj: pd.DataFrame) -> pd.DataFrame:
    """The contract table: percentiles of the pooled errors of each method, and ``detj_pos_pct``.

    ``pooled`` maps a method to its error samples over all pairs
    (:func:`pool_errors`); ``detj`` has the columns of :data:`DETJ_COLUMNS`.
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
    for m in _order(allrows["method"]):
        g = allrows[allrows["method"] == m]
        out.append({"method": m, "target_overlap_mean": g["target_overlap"].mean(),
                    "target_overlap_sd": g["target_overlap"].std(ddof=1) if len(g) > 1 else math.nan,
                    "target_overlap_min": g["target_overlap"].min(), "dice_mean": g["dice"].mean(), "pairs": len(g)})
    return pd.DataFrame(out, columns=["method", "target_overlap_mean", "target_overlap_sd", "target_overlap_min", "dice_mean", "pairs"])


def timing_table(timing: pd.DataFrame) -> pd.DataFrame:
    """Per method: median and mean seconds per pair, the devices and thread counts used, pairs, speed-up over LDDMM (median)."""
    out = []
    for m in _order(timing["method"]):
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
    for m in _order(timing["method"]):
        texts = [t for t in dict.fromkeys(timing.loc[timing["method"] == m, "settings"]) if isinstance(t, str) and t]
        if texts:
            out[m] = "; ".join(texts)
    return out


def detj_table(detj: pd.DataFrame) -> pd.DataFrame:
    """Per method: pairs with det J > 0 everywhere / all pairs, and the extreme det J over pairs."""
    out = []
    for m in _order(detj["method"]):
        g = detj[detj["method"] == m]
        pos = g["detj_pos"].astype(bool)
        out.append({"method": m, "pairs_pos": int(pos.sum()), "pairs": len(g), "detj_pos_pct": 100.0 * pos.mean(),
                    "detj_min": g["detj_min"].min(), "detj_max": g["detj_max"].max(),
                    "nonpos_voxels": int(g["detj_nonpos_voxels"].sum())})
    return pd.DataFrame(out, columns=["method", "pairs_pos", "pairs", "detj_pos_pct", "detj_min", "detj_max", "nonpos_voxels"])


# --------------------------------------------------------------------------- report


def load_pair_results(pair_dir) -> dict:
    """The four files :func:`evaluate_pair` wrote in ``pair_dir``."""
    pair_dir = Path(pair_dir)
    npz = pair_dir / "deformation_error.npz"
    if not npz.is_file():
        raise QsInputError(f"{npz}: file does not exist (run qs evaluate-pair first)")
    try:
        with np.load(npz, allow_pickle=False) as z:
            errors = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise QsInputError(f"{npz}: cannot read deformation errors ({exc})") from exc
    return {"errors": errors,
            "detj": _read_tsv(pair_dir / "detj.tsv", DETJ_COLUMNS),
            "overlap": _read_tsv(pair_dir / "overlap.tsv", OVERLAP_COLUMNS),
            "timing": _read_tsv(pair_dir / "timing.tsv", TIMING_COLUMNS, optional=["settings"])}


def build_report(pair_dirs, out_dir, *, loss_tsvs: dict | None = None, example: dict | None = None,
                 paper_table: bool = True, provenance: dict | None = None, field: str = "momentum") -> dict[str, Path]:
    """Aggregate the per-pair evaluations in ``pair_dirs`` into the report folder ``out_dir``.

    ``loss_tsvs``: model name -> ``loss.tsv`` of its training (``epoch,
    train_l1, val_l1, seconds``). ``example``: the pair drawn in
    ``example_pair.png``, keys ``target``, ``warp`` and ``warped`` or
    ``moving`` (or both), optional ``uncertainty`` and ``pair`` (title);
    ``target_t1``/``moving_t1`` are accepted for ``target``/``moving``.
    ``paper_table``: put the paper's numbers into ``summary.md``; ``field``: what the networks learn
    (``train.field``), which chooses the paper's rows set beside ours (:func:`paper_rows`).
    ``provenance``: key -> value pairs listed at the end of ``summary.md`` (a DataFrame value is
    shown as a table; :func:`qs.provenance.report_items` makes them from ``results/provenance``).
    Returns the paths written.
    """
    pair_dirs = [Path(p) for p in pair_dirs]
    if not pair_dirs:
        raise QsInputError("report: no evaluated pairs given")
    results = [load_pair_results(p) for p in pair_dirs]
    pooled = pool_errors([r["errors"] for r in results])
    detj = pd.concat([r["detj"] for r in results], ignore_index=True)
    overlap = pd.concat([r["overlap"] for r in results], ignore_index=True)
    timing = pd.concat([r["timing"] for r in results], ignore_index=True)
    deformation = deformation_error_table(pooled, detj)
    # val_zero_l1 (the zero field's validation L1) is NaN in loss.tsv files of older runs
    losses = {name: _read_tsv(path, ["epoch", "train_l1", "val_l1"], optional=["val_zero_l1"])
              for name, path in (loss_tsvs or {}).items()}
    example = load_example(example) if example else None

    out_dir = Path(out_dir)
    out = {
        "deformation_error": _write_tsv(deformation, out_dir / "deformation_error.tsv"),
        "target_overlap": _write_tsv(overlap, out_dir / "target_overlap.tsv", float_format="%.6f"),
        "timing": _write_tsv(timing[TIMING_COLUMNS], out_dir / "timing.tsv", float_format="%.3f"),
        "detj": _write_tsv(detj, out_dir / "detj.tsv"),
    }
    out["target_overlap_png"] = _save(plot_target_overlap(overlap), out_dir / "target_overlap.png")
    out["deformation_error_png"] = _save(plot_deformation_error(pooled, paper=paper_table, field=field), out_dir / "deformation_error.png")
    out["example_pair_png"] = _save(plot_example_pair(example), out_dir / "example_pair.png")
    out["loss_png"] = _save(plot_loss(losses, field), out_dir / "loss.png")
    text = summary_markdown(deformation, overlap, timing, detj, losses=losses, n_pairs=len(pair_dirs),
                            paper_table=paper_table, provenance=provenance, field=field)
    out["summary"] = write_text(text, out_dir / "summary.md")
    return out


# --------------------------------------------------------------------------- summary.md


def _fmt(v, spec=".4f") -> str:
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
                     provenance=None) -> str:
    """The text of ``summary.md`` from the aggregated tables."""
    pairs = sorted(set(timing["pair"]) | set(detj["pair"]))
    n_pairs = n_pairs if n_pairs is not None else len(pairs)
    s = ["# Quicksilver: evaluation on the test pairs", ""]
    s += [f"Test pairs: {n_pairs}.", "",
          "**What is compared.** Our numbers come from this pipeline's cohort (by default the built-in demo "
          "cohort: synthetic deformations of the MNI ICBM152 template, on the working grid of the config), "
          "with our LDDMM optimization as the reference and our networks trained on our training pairs. "
          "The paper's numbers (Yang et al., NeuroImage 2017) are for 1 mm OASIS images (deformation error) "
          "and the LPBA40, IBSR18, CUMC12 and MGH10 label sets (target overlap), with networks trained on "
          "OASIS. Cohort, resolution, number of training pairs and LDDMM settings differ, so absolute numbers "
          "are not expected to agree; compare the ordering and the ratios (prediction vs affine, correction vs "
          "prediction), and det J positivity.", ""]

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
              + (" (our networks learn the velocity; the paper has no corrected or MC velocity rows)"
                 if field == "velocity" else "") + ".", "",
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
            s.append(f"\n`{m}` is {r['speedup_vs_lddmm']:.1f}x faster than LDDMM optimization (median "
                     f"{r['median_s']:.2f} s on {r['device']} vs {ref['median_s']:.2f} s on {ref['device']}).")
    if paper_table:
        s += ["", "Paper: about 11 s per 1 mm 3D pair for prediction on one GPU; the precursor paper reports a "
              "66x speed-up over GPU LDDMM optimization in 3D. Our LDDMM runs a fixed number of iterations "
              "(see the config), so the speed-up depends on that setting and on the devices above."]

    s += ["", "## Jacobian determinant", "",
          "det J of phi_1^{-1}, computed from each warp at every voxel of the grid (central differences).", ""]
    s.append(markdown_table(detj_table(detj), {"detj_pos_pct": ".0f", "detj_min": ".4g", "detj_max": ".4g"}))

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
          "- `loss.png`: training and validation L1 per epoch."]
    if provenance:
        s += ["", "## Provenance", ""]
        s += [f"- {k}: {_fmt(v)}" for k, v in provenance.items() if not isinstance(v, pd.DataFrame)]
        for k, v in provenance.items():
            if isinstance(v, pd.DataFrame):
                s += ["", f"{k[:1].upper()}{k[1:]}:", "", markdown_table(v)]
    return "\n".join(s) + "\n"


# --------------------------------------------------------------------------- figures

_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
       "xtick.labelsize": 10, "ytick.labelsize": 10}
_COLORS = {"affine": "#7f7f7f", "lddmm": "#1f77b4", "syn": "#9467bd", "syn-quick": "#c5b0d5", "predict": "#ff7f0e",
           "predict+correct": "#2ca02c", "predict-mc": "#d62728"}


def _color(m, i=0):
    return _COLORS.get(m, f"C{(i + 5) % 10}")


def _figure(*args, **kwargs):
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(*args, **kwargs)
    return fig


def _save(fig, path) -> Path:
    import matplotlib

    with matplotlib.rc_context(_RC), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=fig.dpi)
    return Path(path)


def _note(ax, text):
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_target_overlap(overlap: pd.DataFrame):
    """Box plots of the per-pair pooled target overlap per method, and of the per-label overlaps."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(figsize=(12, 4.8), dpi=100, layout="constrained")
        ax1, ax2 = fig.subplots(1, 2)
        methods = _order(overlap["method"])
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
    """Cumulative distribution of the pooled deformation error per method (:func:`pool_errors`),
    and its percentiles next to the paper's rows for ``field`` (:func:`paper_rows`; log scale, mm)."""
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
            zero = df["val_zero_l1"].to_numpy(float)  # NaN for a loss.tsv of an older run (_read_tsv)
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


def _example_paths(example: dict) -> dict:
    alias = {"target_t1": "target", "moving_t1": "moving"}
    known = {"target", "moving", "warped", "warp", "uncertainty", "pair"}
    ex = {}
    for k, v in example.items():
        k = alias.get(k, k)
        if k not in known:
            raise QsInputError(f"report: unknown example key '{k}' (known: {', '.join(sorted(known | set(alias)))})")
        if v is not None:
            ex[k] = v
    for need in ("target", "warp"):
        if need not in ex:
            raise QsInputError(f"report: the example pair needs '{need}'")
    if "warped" not in ex and "moving" not in ex:
        raise QsInputError("report: the example pair needs 'warped' or 'moving'")
    return ex


def _warp_moving(target, moving, warp):
    """``moving`` warped onto ``target`` by the ANTs displacement ``warp`` (as ``ants.apply_transforms``)."""
    import ants

    out = ants.apply_transforms(fixed=ants.image_read(str(target)), moving=ants.image_read(str(moving)),
                                transformlist=[str(warp)])
    return out.numpy()


def _uncertainty_volume(path, grid, grid_name):
    """``sqrt`` of ``uncertainty.nii.gz``: :mod:`qs.predict` stores the trace of the covariance of the
    MC-dropout samples' displacement (mm^2), so this is their RMS spread in mm."""
    img = load_image(path, what="uncertainty map")
    check_same_grid(grid, img, grid_name, path)
    return np.sqrt(np.maximum(np.asarray(img.dataobj), 0))


def load_example(example: dict) -> dict:
    """Read the example pair's files (see :func:`build_report`) into arrays on the target grid.

    Returns ``target``, ``warped``, ``moving`` (or None), ``disp`` ``(3, I, J, K)``
    mm, ``uncertainty`` (RMS spread in mm, or None), ``affine`` and ``pair``. Without a
    ``warped`` image, ``moving`` is warped with ANTs by ``warp``.
    """
    ex = _example_paths(example)
    target_img = load_image(ex["target"], what="target image")

    def on_grid(key, what):
        if key not in ex:
            return None
        img = load_image(ex[key], what=what)
        check_same_grid(target_img, img, ex["target"], ex[key])
        return np.asarray(img.dataobj)

    moving = on_grid("moving", "moving image")
    disp = _read_warp(ex["warp"], target_img, ex["target"])
    warped = on_grid("warped", "warped image")
    if warped is None:
        warped = _warp_moving(ex["target"], ex["moving"], ex["warp"])
    unc = _uncertainty_volume(ex["uncertainty"], target_img, ex["target"]) if "uncertainty" in ex else None
    return {"target": np.asarray(target_img.dataobj), "warped": warped, "moving": moving, "disp": disp,
            "uncertainty": unc, "affine": target_img.affine, "pair": str(ex.get("pair", ""))}


def plot_example_pair(ex: dict | None):
    """Mid slices of one pair (:func:`load_example`): moving, warped moving, target, the target's grid
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


# --------------------------------------------------------------------------- command line


def _pairs_of(specs, what) -> dict:
    out = {}
    for spec in specs or []:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise QsInputError(f"{what} must be NAME=VALUE, got '{spec}'")
        if key in out:
            raise QsInputError(f"{what}: '{key}' given twice")
        out[key] = value
    return out


def _evaluate_pair_cli(args):
    methods = _pairs_of(args.method, "--method")
    out = evaluate_pair(args.pair, args.out, lddmm_dir=args.lddmm, method_dirs=methods,
                        target_labels=args.target_labels, moving_labels=args.moving_labels, mask=args.mask)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def _report_cli(args):
    from .provenance import read_provenance, report_items

    provenance = report_items(read_provenance(args.provenance_dir)) if args.provenance_dir else {}
    if args.provenance_json:
        path = Path(args.provenance_json)
        try:
            provenance.update(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise QsInputError(f"{path}: cannot read provenance as a JSON object ({exc})") from exc
    provenance.update(_pairs_of(args.provenance, "--provenance"))
    out = build_report(args.pairs, args.out, loss_tsvs=_pairs_of(args.loss, "--loss"),
                       example=_pairs_of(args.example, "--example") or None, paper_table=not args.no_paper_table,
                       provenance=provenance or None, field=args.field)
    print(json.dumps({k: str(v) for k, v in out.items()}))


def add_subcommands(subparsers) -> None:
    """Add ``qs evaluate-pair`` and ``qs report`` to the ``qs`` command line."""
    p = subparsers.add_parser("evaluate-pair", help="evaluate one test pair against LDDMM (deformation error, det J, overlap, time)")
    p.add_argument("--pair", required=True, help="pair id, e.g. sub-01_to_sub-02")
    p.add_argument("--lddmm", required=True, type=Path, help="LDDMM result folder of the pair (warp.nii.gz, summary.json...)")
    p.add_argument("--method", action="append", metavar="NAME=DIR",
                   help="a compared method and its result folder (repeatable): syn, syn-quick, predict, predict+correct "
                        "(or predict-correct), predict-mc")
    p.add_argument("--target-labels", type=Path, help="target labels on the working grid (> 0 = brain mask)")
    p.add_argument("--moving-labels", type=Path, help="moving labels on the working grid (the affine method's warped labels)")
    p.add_argument("--mask", type=Path, help="brain mask on the working grid, used when there are no target labels")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder: deformation_error.npz, detj.tsv, overlap.tsv, timing.tsv")
    p.set_defaults(func=_evaluate_pair_cli)

    p = subparsers.add_parser("report", help="aggregate evaluated pairs: tables, figures and summary.md")
    p.add_argument("pairs", nargs="+", type=Path, help="folders written by qs evaluate-pair")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--loss", action="append", metavar="NAME=TSV", help="training loss.tsv of a network (repeatable)")
    p.add_argument("--example", action="append", metavar="KEY=PATH",
                   help="example pair for example_pair.png (repeatable): target=, warp=, warped= and/or moving=, "
                        "optional uncertainty=, pair=NAME")
    p.add_argument("--provenance-dir", type=Path, help="folder written by qs provenance (results/provenance): "
                   "seed, config digest, versions and device in summary.md")
    p.add_argument("--provenance", action="append", metavar="KEY=VALUE", help="a line of provenance in summary.md (repeatable)")
    p.add_argument("--provenance-json", type=Path, help="JSON object of provenance lines for summary.md")
    p.add_argument("--field", default="momentum", choices=["momentum", "velocity"],
                   help="what the networks learned (train.field): chooses the paper's rows set beside ours")
    p.add_argument("--no-paper-table", action="store_true", help="leave the paper's numbers out of summary.md and the figure")
    p.set_defaults(func=_report_cli)
