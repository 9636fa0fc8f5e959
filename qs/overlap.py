"""``qs overlap``: per-label target overlap and Dice of warped label images against the target's labels.

Reads label NIfTI files on one grid (the target's working grid) and writes one TSV
(:data:`qs.evaluate.OVERLAP_COLUMNS`); the numbers are :func:`qs.evaluate.overlap_rows`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .evaluate import OVERLAP_COLUMNS, overlap_rows
from .io import QsInputError, check_same_grid, load_labels, write_text


def parse_method(spec: str) -> tuple[str, str]:
    """``NAME=LABELS`` -> (name, path); anything else is refused."""
    method, _, path = spec.partition("=")
    if not method or not path:
        raise QsInputError(f"--method must be NAME=LABELS, got '{spec}'")
    return method, path


def warped_label_overlaps(pair: str, target, target_path, methods) -> list[dict]:
    """Overlap rows of each method's warped labels (``(name, path)`` pairs) against ``target``, the target's
    label image (:func:`qs.io.load_labels`) read from ``target_path``; a file on another grid is refused."""
    target_data = np.asarray(target.dataobj)
    rows = []
    for method, path in methods:
        warped = load_labels(path)
        check_same_grid(target, warped, target_path, path)
        rows += overlap_rows(pair, method, np.asarray(warped.dataobj), target_data)
    return rows


def write_overlap_table(pair: str, target_labels, methods: list[tuple[str, str]], out) -> None:
    """One TSV of the overlap of each method's warped labels (``(name, path)``) with ``target_labels``."""
    rows = warped_label_overlaps(pair, load_labels(target_labels), target_labels, methods)
    write_text(pd.DataFrame(rows, columns=OVERLAP_COLUMNS).to_csv(sep="\t", index=False, float_format="%.6f"), out)
