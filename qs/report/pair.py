"""Evaluation of one test pair against LDDMM optimization: reads the pair's method outputs, writes its evaluation.

:func:`evaluate_pair` writes ``deformation_error.npz`` (per method, float32 error in mm at every voxel of the
target brain mask), ``detj.tsv``, ``overlap.tsv`` and ``timing.tsv`` (seconds); :func:`load_pair_results` reads
them back. Displacements are ``(3, I, J, K)`` in mm along the voxel axes (:func:`qs.transforms.read_ants_displacement`).
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

from ..evaluate import OVERLAP_COLUMNS, detj_summary, displacement_error_mm
from ..io import QsInputError, atomic_path, check_same_grid, load_image, load_labels, spacing
from ..overlap import warped_label_overlaps
from ..transforms import read_ants_displacement
from .methods import is_syn, method_name, report_order
from .tsv import DETJ_COLUMNS, PAIR_TIMING_COLUMNS, TIMING_COLUMNS, read_tsv, write_tsv

#: keys of a summary's time in seconds, first found wins
_TIME_KEYS = ("seconds", "time", "time_s", "wall_seconds", "elapsed")


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
    device = summary.get("device") or ("cpu" if is_syn(method) else "unknown")
    threads = summary.get("threads")
    threads = int(threads) if isinstance(threads, (int, float)) and not isinstance(threads, bool) else 0
    settings = summary.get("description")
    return {"pair": pair, "method": method, "seconds": float(seconds), "device": str(device), "threads": threads,
            "settings": settings if isinstance(settings, str) else ""}


def _grid_image(shape, affine) -> nib.Nifti1Image:
    """An empty image of ``shape`` and ``affine``: the grid a file is checked against."""
    return nib.Nifti1Image(np.zeros(shape, np.uint8), affine)


def read_warp(path, grid, grid_name) -> np.ndarray:
    """The ``(3, I, J, K)`` displacement (mm) of an ANTs warp, checked to lie on ``grid``."""
    disp, affine = read_ants_displacement(path)
    check_same_grid(grid, _grid_image(disp.shape[1:], affine), grid_name, path)
    return disp


def evaluate_pair(pair: str, out_dir, *, lddmm_dir, method_dirs: dict, target_labels=None, moving_labels=None,
                  mask=None, exclude_labels=()) -> dict[str, Path]:
    """Evaluate one test pair against LDDMM optimization; write the four per-pair files into ``out_dir``.

    ``method_dirs`` maps method names (table or folder names: ``syn``, ``syn-quick``,
    ``predict``, ``predict+correct`` or ``predict-correct``, ``predict-mc``...)
    to their result folders. Every method except the SyN ones must have a
    ``warp.nii.gz`` on LDDMM's grid. ``target_labels`` (> 0) define the brain
    mask; without them ``mask`` (a NIfTI on the same grid) is used. The
    affine method's warped labels are the ``moving_labels``. ``exclude_labels``:
    label ids left out of the evaluation (LPBA40's 181 and 182, which its skull
    strip removed): the target's voxels of these ids count as background, for
    the overlap and for the brain mask of the deformation error.

    Returns the paths of ``deformation_error.npz``, ``detj.tsv``,
    ``overlap.tsv`` and ``timing.tsv``.
    """
    import torch

    from ..lddmm.jacobian import jacobian_determinant

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
        if len(exclude_labels):
            target = np.where(np.isin(target, np.asarray(exclude_labels, dtype=target.dtype)), 0, target)
            tl = nib.Nifti1Image(target, tl.affine, tl.header)
        brain = target > 0
        if not brain.any():
            left_out = f" once labels {list(exclude_labels)} are left out (evaluate.exclude_labels)" if len(exclude_labels) else ""
            raise QsInputError(f"{target_labels}: the target has no labels{left_out}")
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

    errors = {"affine": displacement_error_mm(np.zeros_like(ref_disp), ref_disp, brain).astype(np.float32)}
    detj_rows = [detj_row("lddmm", ref_disp)]
    for m in report_order(methods):
        if is_syn(m):
            continue
        disp = read_warp(methods[m] / "warp.nii.gz", grid, grid_name)
        errors[m] = displacement_error_mm(disp, ref_disp, brain).astype(np.float32)
        detj_rows.append(detj_row(m, disp))

    rows = []
    if target is not None:
        sources = {"lddmm": lddmm_dir, **methods}
        sources = {m: Path(d) / "warped_labels.nii.gz" for m, d in sources.items()}
        sources = {m: path for m, path in sources.items() if path.is_file()}
        if moving_labels is not None:
            sources["affine"] = Path(moving_labels)  # load_labels names it if it is missing
        rows = warped_label_overlaps(pair, tl, target_labels, [(m, sources[m]) for m in report_order(sources)])

    timing = [timing_row(pair, "lddmm", read_summary(lddmm_dir, "lddmm"), source=lddmm_dir / "summary.json")]
    timing += [timing_row(pair, m, read_summary(methods[m], m), source=methods[m] / "summary.json") for m in report_order(methods)]

    out_dir.mkdir(parents=True, exist_ok=True)
    out = {"deformation_error": out_dir / "deformation_error.npz", "detj": out_dir / "detj.tsv",
           "overlap": out_dir / "overlap.tsv", "timing": out_dir / "timing.tsv"}
    with atomic_path(out["deformation_error"]) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **errors)
    write_tsv(pd.DataFrame(detj_rows, columns=DETJ_COLUMNS), out["detj"])
    write_tsv(pd.DataFrame(rows, columns=OVERLAP_COLUMNS), out["overlap"], float_format="%.6f")
    write_tsv(pd.DataFrame(timing, columns=PAIR_TIMING_COLUMNS), out["timing"], float_format="%.3f")
    return out


def load_pair_results(pair_dir) -> dict:
    """The four files :func:`evaluate_pair` wrote in ``pair_dir``: ``errors`` (method -> float32 mm), ``detj``,
    ``overlap``, ``timing`` (DataFrames)."""
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
            "detj": read_tsv(pair_dir / "detj.tsv", DETJ_COLUMNS),
            "overlap": read_tsv(pair_dir / "overlap.tsv", OVERLAP_COLUMNS),
            "timing": read_tsv(pair_dir / "timing.tsv", TIMING_COLUMNS, optional=["settings"])}
