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


def write_overlap_table(pair: str, target_labels, methods: list[tuple[str, str]], out) -> None:
    """One TSV of the overlap of each method's warped labels (``(name, path)``) with ``target_labels``."""
    target = load_labels(target_labels)
    rows = []
    for method, path in methods:
        warped = load_labels(path)
        check_same_grid(target, warped, target_labels, path)
        rows += overlap_rows(pair, method, np.asarray(warped.dataobj), np.asarray(target.dataobj))
    write_text(pd.DataFrame(rows, columns=OVERLAP_COLUMNS).to_csv(sep="\t", index=False, float_format="%.6f"), out)
