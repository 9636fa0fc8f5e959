"""Cohort inputs: subject sheets, BIDS discovery, train/test splits and pairs.

Both a subject sheet (TSV) and a BIDS folder become the same validated table
with columns ``subject``, ``t1``, ``t2``, ``labels``, ``split``: absolute
paths (empty string where absent) and ``split`` in {``train``, ``test``}.
Splits and pairs are deterministic functions of the table and a seed.
"""

from __future__ import annotations

import re
from itertools import permutations
from pathlib import Path

import numpy as np
import pandas as pd

from .io import QsInputError

COLUMNS = ["subject", "t1", "t2", "labels", "split"]
SPLITS = ("train", "test")
ATLAS = "atlas"
#: what a subject id may be (the workflow's ``{subject}`` wildcard pattern)
SUBJECT_PATTERN = "[A-Za-z0-9][A-Za-z0-9_-]*"
_SUBJECT_ID = re.compile(f"^{SUBJECT_PATTERN}$")


def read_sheet(path) -> pd.DataFrame:
    """Read and validate a subject sheet (TSV); paths are relative to the sheet.

    Required columns: ``subject``, ``t1``. Optional: ``t2``, ``labels``,
    ``split``. Extra columns are kept (covariates). Raises QsInputError
    naming the sheet, row and problem.
    """
    path = Path(path)
    if not path.is_file():
        raise QsInputError(f"{path}: subject sheet does not exist")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment=None)
    except pd.errors.EmptyDataError:
        raise QsInputError(f"{path}: the subject sheet is empty; expected a header line (subject, t1, ...) and one row per subject") from None
    except Exception as exc:
        raise QsInputError(f"{path}: cannot parse the subject sheet as TSV ({exc})") from exc
    if len(table.columns) == 1 and "," in table.columns[0]:
        raise QsInputError(f"{path}: the sheet looks comma-separated; subject sheets are tab-separated (TSV)")
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("subject", "t1") if c not in table.columns]
    if missing:
        raise QsInputError(f"{path}: missing required column(s) {missing}; found {list(table.columns)}")
    if table.empty:
        raise QsInputError(f"{path}: the subject sheet has no rows")
    for col in ("t2", "labels", "split"):
        if col not in table.columns:
            table[col] = ""
    table = table.apply(lambda s: s.str.strip())
    table = table[COLUMNS + [c for c in table.columns if c not in COLUMNS]]
    return _validate_table(table, path, path.parent)


def _validate_table(table: pd.DataFrame, source, root: Path) -> pd.DataFrame:
    """Check ids, duplicates, split values and files; make paths absolute."""
    for i, row in table.iterrows():
        where = f"{source}: row {i + 2} (subject '{row['subject']}')"
        if not _SUBJECT_ID.match(row["subject"]):
            raise QsInputError(f"{where}: invalid subject id; use letters, digits, '-' and '_' only")
        if row["subject"] == ATLAS:
            raise QsInputError(f"{where}: 'atlas' is reserved for the atlas")
        if row["split"] not in ("",) + SPLITS:
            raise QsInputError(f"{where}: split must be 'train', 'test' or empty, got '{row['split']}'")
        if not row["t1"]:
            raise QsInputError(f"{where}: the t1 column is empty")
    dup = table["subject"][table["subject"].duplicated()].unique()
    if len(dup):
        raise QsInputError(f"{source}: duplicate subject id(s): {', '.join(dup)}")
    for col in ("t1", "t2", "labels"):
        table[col] = [_resolve(p, root, source, subject, col) for p, subject in zip(table[col], table["subject"])]
    _check_distinct_files(table, source)
    return table.reset_index(drop=True)


def _resolve(value: str, root: Path, source, subject: str, col: str) -> str:
    if not value:
        return ""
    p = Path(value)
    p = p if p.is_absolute() else (root / p)
    if p.is_symlink() and not p.exists():
        raise QsInputError(f"{source}: subject '{subject}': {col} file {p} is a broken symbolic link or a symbolic link loop")
    if not p.is_file():
        raise QsInputError(f"{source}: subject '{subject}': {col} file {p} does not exist")
    resolved = str(p.resolve())
    check_workflow_path(resolved, f"{source}: subject '{subject}': {col} file")
    return resolved


#: characters a path handed to the workflow may not hold: Snakemake reads braces as wildcards,
#: and control characters (newlines, tabs) break the subject sheet, logs and shell commands
_UNUSABLE = re.compile(r"[{}\x00-\x1f\x7f]")


def check_workflow_path(path, what: str) -> None:
    """Refuse a path the workflow cannot carry (braces, control characters), naming ``what``.

    Every other character (spaces, quotes, ``;``, ``$``, unicode) is fine: the rules quote
    each path (``:q``) before it reaches a shell command.
    """
    bad = sorted(set(_UNUSABLE.findall(str(path))))
    if bad:
        shown = " ".join(repr(c) for c in bad)
        raise QsInputError(f"{what} {str(path)!r} contains {shown}, which the workflow cannot use in a path "
                           "(Snakemake reads braces as wildcards; control characters break commands and logs); "
                           "rename it or link it from a path without them")


def check_config_paths(config: dict) -> None:
    """:func:`check_workflow_path` for every path setting of the workflow config."""
    paths = {"results": config["results"], "cohort.sheet": config["cohort"]["sheet"], "cohort.bids": config["cohort"]["bids"]}
    paths |= {f"atlas.{k}": config["atlas"].get(k, "") for k in ("t1", "mask", "labels", "t2")}
    paths |= {f"models.{k}": config.get("models", {}).get(k, "") for k in ("prediction", "correction")}
    for key, value in paths.items():
        if value:
            check_workflow_path(value, f"config: {key}:")


def _check_distinct_files(table: pd.DataFrame, source) -> None:
    """Refuse one file given twice (the same path, a link to it or a hard link), naming both subjects."""
    seen = {}
    for row in table.itertuples():
        for col in ("t1", "t2", "labels"):
            path = getattr(row, col)
            if not path:
                continue
            st = Path(path).stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                first, first_col, first_path = seen[key]
                same = path if path == first_path else f"{first_path} and {path}"
                who = f"subject '{first}'" if first == row.subject else f"subjects '{first}' and '{row.subject}'"
                raise QsInputError(f"{source}: {who} use the same file {same} ({first_col} of '{first}', "
                                   f"{col} of '{row.subject}'); each image of each subject must be its own file")
            seen[key] = (row.subject, col, path)


def discover_bids(root, *, label_suffixes=("dseg", "labels")) -> pd.DataFrame:
    """Find ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` (+ ``_T2w`` and a label image).

    One row per subject and session; the subject id is ``sub-X`` or
    ``sub-X_ses-Y``. Several T1w images for one session (runs, acquisitions)
    are an error that lists them. Label images are ``*_<suffix>.nii[.gz]``
    in the same ``anat`` folder, for the first suffix that matches.
    """
    root = Path(root)
    if not root.is_dir():
        raise QsInputError(f"{root}: BIDS folder does not exist")
    anats = sorted(p for p in root.glob("sub-*/anat") if p.is_dir()) + sorted(p for p in root.glob("sub-*/ses-*/anat") if p.is_dir())
    rows = []
    for anat in sorted(anats):
        parts = anat.relative_to(root).parts
        subject = "_".join(parts[:-1])
        t1 = _one(anat, "T1w", subject)
        if t1 is None:
            images = sorted(p.name for p in anat.iterdir() if re.search(r"\.nii(\.gz)?$", p.name))
            if images:
                raise QsInputError(f"{anat}: no _T1w image for {subject} (found {', '.join(images)}); "
                                   "name the T1 '<...>_T1w.nii.gz', or give a subject sheet without this subject")
            continue
        t2 = _one(anat, "T2w", subject)
        labels = None
        for suffix in label_suffixes:
            labels = _one(anat, suffix, subject)
            if labels is not None:
                break
        rows.append({"subject": subject, "t1": str(t1), "t2": str(t2 or ""), "labels": str(labels or ""), "split": ""})
    if not rows:
        raise QsInputError(f"{root}: no T1w images found (expected sub-*/[ses-*/]anat/*_T1w.nii[.gz])")
    table = pd.DataFrame(rows, columns=COLUMNS)
    participants = root / "participants.tsv"
    if participants.is_file():
        table["split"] = _participant_splits(participants, [s.split("_")[0] for s in table["subject"]])
    return _validate_table(table, root, root)


def _participant_splits(path: Path, participants: list[str]) -> list[str]:
    """The ``split`` column of a BIDS ``participants.tsv`` for ``participants`` ('' where absent)."""
    try:
        extra = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for malformed files
        raise QsInputError(f"{path}: cannot parse participants.tsv as TSV ({type(exc).__name__}: {exc})") from None
    if "split" not in extra.columns:
        return [""] * len(participants)
    if "participant_id" not in extra.columns:
        raise QsInputError(f"{path}: has a split column but no participant_id column; found {list(extra.columns)}")
    bad = extra[~extra["split"].str.strip().isin(("",) + SPLITS)]
    if len(bad):
        found = ", ".join(f"{p} '{v}'" for p, v in zip(bad["participant_id"], bad["split"]))
        raise QsInputError(f"{path}: split must be 'train', 'test' or empty, got {found}")
    split = dict(zip(extra["participant_id"].str.strip(), extra["split"].str.strip()))
    return [split.get(p, "") for p in participants]


def _one(anat: Path, suffix: str, subject: str) -> Path | None:
    found = sorted(p for p in anat.iterdir() if re.search(rf"_{suffix}\.nii(\.gz)?$", p.name))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise QsInputError(f"{anat}: several _{suffix} images for {subject} ({names}); keep one or give a subject sheet")
    return found[0] if found else None


def assign_splits(table: pd.DataFrame, *, test_fraction: float, seed: int) -> pd.DataFrame:
    """Fill empty ``split`` entries: a seeded random ``test_fraction`` become test.

    Rows that already have a split keep it. At least one subject is test and
    one is train when the table has two or more subjects.
    """
    table = table.copy()
    free = [i for i in table.index if table.at[i, "split"] == ""]
    if free:
        order = np.random.default_rng(seed).permutation(len(free))
        n_test = int(round(test_fraction * len(free)))
        if len(free) >= 2:
            n_test = min(max(n_test, 1), len(free) - 1)
        for rank, k in enumerate(order):
            table.at[free[k], "split"] = "test" if rank < n_test else "train"
    return table


def ordered_pairs(subjects: list[str], limit: int, seed) -> list[tuple[str, str]]:
    """Ordered pairs ``(moving, target)`` of distinct ``subjects`` in :func:`itertools.permutations` order;
    ``limit`` > 0 keeps a seeded random subset of that many (``np.random.default_rng(seed)``), in that order.

    The subset is drawn by pair index and each index mapped to its pair, so ``n`` subjects never
    enumerate their ``n (n - 1)`` pairs (10,000 subjects: 10^8).
    """
    n = len(subjects)
    total = n * (n - 1)
    if not limit or total <= limit:
        return list(permutations(subjects, 2))
    keep = np.sort(np.random.default_rng(seed).choice(total, size=limit, replace=False))
    i, r = np.divmod(keep, n - 1)
    j = np.where(r < i, r, r + 1)  # the r-th subject other than i
    return [(subjects[a], subjects[b]) for a, b in zip(i.tolist(), j.tolist())]


def make_pairs(table: pd.DataFrame, *, mode: str, seed: int, max_train_pairs: int = 0, max_test_pairs: int = 0,
               train_pairs_optional: bool = False, reference_pairs: bool = True) -> pd.DataFrame:
    """Registration pairs ``moving -> target`` with columns pair, moving, target, split.

    ``atlas-to-image``: the atlas is the moving image for every subject.
    ``image-to-image``: all ordered pairs of distinct subjects within a split.
    ``max_*_pairs`` > 0 keeps a seeded random subset (sorted by pair id).
    A split without pairs is an error, the train split's not with ``train_pairs_optional``
    (a run that reuses trained models needs no training pairs). ``reference_pairs`` False: no test pairs at all
    (config ``pairs.reference``: a run that only registers the cohort).
    """
    if mode not in ("atlas-to-image", "image-to-image"):
        raise QsInputError(f"pairs.mode must be 'atlas-to-image' or 'image-to-image', got '{mode}'")
    rows = []
    for split in SPLITS:
        if split == "test" and not reference_pairs:
            continue
        subjects = sorted(table.loc[table["split"] == split, "subject"])
        limit = max_train_pairs if split == "train" else max_test_pairs
        if mode == "atlas-to-image":
            combos = [(ATLAS, s) for s in subjects]
            if limit and len(combos) > limit:
                keep = np.random.default_rng([seed, SPLITS.index(split)]).choice(len(combos), size=limit,
                                                                                 replace=False)
                combos = [combos[k] for k in sorted(keep)]
        else:
            combos = ordered_pairs(subjects, limit, [seed, SPLITS.index(split)])
        rows += [{"pair": f"{m}_to_{t}", "moving": m, "target": t, "split": split} for m, t in combos]
    pairs = pd.DataFrame(rows, columns=["pair", "moving", "target", "split"])
    for split in SPLITS:
        if (split == "train" and train_pairs_optional) or (split == "test" and not reference_pairs):
            continue
        if not (pairs["split"] == split).any():
            raise QsInputError(
                f"no {split} pairs: {mode} pairing needs "
                f"{'one' if mode == 'atlas-to-image' else 'two'} or more {split} subjects "
                f"(have {int((table['split'] == split).sum())}); adjust the split or pairs.mode"
            )
    return pairs


def load_cohort(source: str, *, sheet=None, bids=None, label_suffixes=("dseg", "labels"), test_fraction=0.25, seed=0) -> pd.DataFrame:
    """The validated cohort table from a sheet or BIDS folder, splits filled in."""
    if source == "sheet":
        if not sheet:
            raise QsInputError("config: cohort.source is 'sheet' but cohort.sheet is empty")
        table = read_sheet(sheet)
    elif source == "bids":
        if not bids:
            raise QsInputError("config: cohort.source is 'bids' but cohort.bids is empty")
        table = discover_bids(bids, label_suffixes=tuple(label_suffixes))
    else:
        raise QsInputError(f"config: unknown cohort.source '{source}' (demo, sheet or bids)")
    return assign_splits(table, test_fraction=test_fraction, seed=seed)


def drop_partial_columns(table: pd.DataFrame) -> list[str]:
    """Empty the ``t2`` / ``labels`` column (in place) where only some subjects have the file; returns warnings."""
    notes = []
    for kind in ("t2", "labels"):
        present = table[kind] != ""
        if present.any() and not present.all():
            missing = ", ".join(table.loc[~present, "subject"][:5])
            notes.append(f"{kind} given for only some subjects (missing: {missing}...); ignoring the {kind} column")
            table[kind] = ""
    return notes


def cohort_tables(*, source: str, sheet="", bids="", label_suffixes=("dseg", "labels"), test_fraction=0.25, seed=0,
                  demo_root="", demo_subjects_n=0, mode="image-to-image", max_train_pairs=0, max_test_pairs=0,
                  train_pairs_optional=False, reference_pairs=True):
    """The workflow's cohort: ``(subjects, pairs, warnings)``, the subject and pair tables of ``config``.

    One function for the workflow (which plans from it) and ``qs cohort-tables`` (which writes it), so
    that the written tables are the planned ones. ``source`` ``demo`` describes the demo cohort that
    ``qs demo`` writes into ``demo_root``; ``sheet`` and ``bids`` read and validate the cohort. Partly
    filled ``t2`` / ``labels`` columns are emptied (:func:`drop_partial_columns`, with a warning).
    """
    if source == "demo":
        subjects = demo_table(demo_root, demo_subjects_n, test_fraction=test_fraction, seed=seed)
    else:
        subjects = load_cohort(source, sheet=sheet, bids=bids, label_suffixes=label_suffixes,
                               test_fraction=test_fraction, seed=seed)
    notes = drop_partial_columns(subjects)
    pairs = make_pairs(subjects, mode=mode, seed=seed, max_train_pairs=max_train_pairs, max_test_pairs=max_test_pairs,
                       train_pairs_optional=train_pairs_optional, reference_pairs=reference_pairs)
    return subjects, pairs, notes


def demo_subjects(n_subjects: int) -> list[str]:
    """Subject ids of the built-in demo cohort: sub-01, sub-02, ... (wider past 99)."""
    width = max(2, len(str(n_subjects)))
    return [f"sub-{k:0{width}d}" for k in range(1, n_subjects + 1)]


def demo_table(root, n_subjects: int, *, test_fraction: float, seed: int) -> pd.DataFrame:
    """The demo cohort's table, known before its files are written.

    Paths follow the layout ``qs demo`` writes; splits come from
    :func:`assign_splits`, so the demo's ``subjects.tsv`` and the workflow agree.
    """
    root = Path(root)
    rows = [
        {
            "subject": s,
            "t1": str(root / s / f"{s}_T1w.nii.gz"),
            "t2": str(root / s / f"{s}_T2w.nii.gz"),
            "labels": str(root / s / f"{s}_labels.nii.gz"),
            "split": "",
        }
        for s in demo_subjects(n_subjects)
    ]
    return assign_splits(pd.DataFrame(rows, columns=COLUMNS), test_fraction=test_fraction, seed=seed)
