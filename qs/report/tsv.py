"""The report's TSV tables: their columns, and reading and writing them with the report's number formats.

Numbers are written with ``float_format`` (``%.6g`` unless a table says otherwise) and ``NaN`` for missing
values; deformation errors are in mm, times in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..evaluate import PERCENTILES
from ..io import QsInputError, write_text

PERCENTILE_COLUMNS = [f"p{p:g}" for p in PERCENTILES]
DEFORMATION_COLUMNS = ["method", *PERCENTILE_COLUMNS, "detj_pos_pct"]
DETJ_COLUMNS = ["pair", "method", "detj_min", "detj_max", "detj_pos", "detj_nonpos_voxels"]
TIMING_COLUMNS = ["pair", "method", "seconds", "device", "threads"]
#: the per-pair ``timing.tsv`` of :func:`qs.report.pair.evaluate_pair`: also the settings a summary states (SyN's ``description``)
PAIR_TIMING_COLUMNS = [*TIMING_COLUMNS, "settings"]


def write_tsv(df: pd.DataFrame, path, float_format="%.6g") -> Path:
    """Write ``df`` as a TSV (atomically; ``float_format`` for floats, ``NaN`` for missing values); returns ``path``."""
    return write_text(df.to_csv(sep="\t", index=False, float_format=float_format, na_rep="NaN"), path)


def read_tsv(path, columns, optional=()) -> pd.DataFrame:
    """The TSV at ``path`` with ``columns`` (``QsInputError`` naming it if missing or unreadable), plus ``optional``
    columns (NaN when absent, as in files of older runs)."""
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
