"""Subject sheets, BIDS discovery, splits and pairs."""

import numpy as np
import pandas as pd
import pytest

from qs.cohort import assign_splits, demo_table, discover_bids, make_pairs, read_sheet
from qs.io import QsInputError

from conftest import blob, write_nifti


def write_sheet(path, rows, header="subject\tt1\tlabels\tsplit"):
    path.write_text(header + "\n" + "\n".join("\t".join(r) for r in rows) + "\n")
    return path


def test_sheet_paths_are_relative_to_the_sheet(tmp_path, subject_files):
    a, b = subject_files("s1"), subject_files("s2")
    sheet = write_sheet(tmp_path / "subjects.tsv", [
        ["s1", "s1/s1_T1w.nii.gz", "s1/s1_labels.nii.gz", "train"],
        ["s2", str(b["t1"]), "", "test"],
    ])
    table = read_sheet(sheet)
    assert list(table.columns[:5]) == ["subject", "t1", "t2", "labels", "split"]
    assert table.loc[0, "t1"] == str(a["t1"].resolve())
    assert table.loc[0, "labels"] == str(a["labels"].resolve())
    assert table.loc[1, "labels"] == "" and table.loc[1, "t2"] == ""
    assert list(table["split"]) == ["train", "test"]


@pytest.mark.parametrize(
    "rows, header, message",
    [
        ([["s1", "s1/s1_T1w.nii.gz", "", ""], ["s1", "s1/s1_T1w.nii.gz", "", ""]], None, "duplicate subject id(s): s1"),
        ([["s1", "s1/missing.nii.gz", "", ""]], None, "t1 file"),
        ([["s1", "s1/s1_T1w.nii.gz", "", "validation"]], None, "split must be 'train', 'test' or empty"),
        ([["s 1", "s1/s1_T1w.nii.gz", "", ""]], None, "invalid subject id"),
        ([["s1", "", "", ""]], None, "the t1 column is empty"),
        ([["s1", "s1/s1_T1w.nii.gz"]], "subject\timage", "missing required column(s) ['t1']"),
        ([], None, "has no rows"),
        ([["atlas", "s1/s1_T1w.nii.gz", "", ""]], None, "reserved"),
    ],
)
def test_malformed_sheets_name_the_sheet_and_the_problem(tmp_path, subject_files, rows, header, message):
    subject_files("s1")
    sheet = write_sheet(tmp_path / "bad.tsv", rows, header or "subject\tt1\tlabels\tsplit")
    with pytest.raises(QsInputError) as err:
        read_sheet(sheet)
    assert str(sheet) in str(err.value) and message in str(err.value)


def test_comma_separated_sheet_is_explained(tmp_path, subject_files):
    subject_files("s1")
    sheet = tmp_path / "subjects.csv"
    sheet.write_text("subject,t1\ns1,s1/s1_T1w.nii.gz\n")
    with pytest.raises(QsInputError, match="comma-separated"):
        read_sheet(sheet)


def test_missing_sheet(tmp_path):
    with pytest.raises(QsInputError, match="subject sheet does not exist"):
        read_sheet(tmp_path / "nope.tsv")


def make_bids(root):
    anat = root / "sub-01" / "anat"
    write_nifti(anat / "sub-01_T1w.nii.gz", blob())
    write_nifti(anat / "sub-01_T2w.nii.gz", blob(seed=1))
    write_nifti(anat / "sub-01_dseg.nii.gz", (blob() > 0).astype("int32"))
    for ses in ("1", "2"):
        write_nifti(root / "sub-02" / f"ses-{ses}" / "anat" / f"sub-02_ses-{ses}_T1w.nii", blob(seed=2))
    (root / "sub-03" / "anat").mkdir(parents=True)  # no T1w: skipped
    (root / "participants.tsv").write_text("participant_id\tsplit\nsub-01\ttest\nsub-02\ttrain\n")


def test_bids_discovery(tmp_path):
    make_bids(tmp_path / "bids")
    table = discover_bids(tmp_path / "bids")
    assert list(table["subject"]) == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    row = table.iloc[0]
    assert row["t2"].endswith("sub-01_T2w.nii.gz") and row["labels"].endswith("sub-01_dseg.nii.gz")
    assert table.iloc[1]["t2"] == "" and table.iloc[1]["t1"].endswith(".nii")
    assert list(table["split"]) == ["test", "train", "train"]


def test_bids_ambiguous_runs_are_an_error(tmp_path):
    make_bids(tmp_path / "bids")
    write_nifti(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_run-2_T1w.nii.gz", blob())
    with pytest.raises(QsInputError, match="several _T1w images for sub-01"):
        discover_bids(tmp_path / "bids")


def test_bids_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(QsInputError, match="no T1w images found"):
        discover_bids(tmp_path / "empty")


def _table(n):
    return pd.DataFrame({"subject": [f"s{i}" for i in range(n)], "t1": "x", "t2": "", "labels": "", "split": ""})


def test_splits_are_deterministic_and_keep_given_splits():
    t = _table(10)
    t.loc[0, "split"] = "test"
    a = assign_splits(t, test_fraction=0.3, seed=4)
    assert a.equals(assign_splits(t, test_fraction=0.3, seed=4))
    assert a.loc[0, "split"] == "test"
    assert (a["split"] == "test").sum() == 1 + 3
    b = assign_splits(t, test_fraction=0.3, seed=5)
    assert not a["split"].equals(b["split"])


def test_two_subjects_give_one_train_and_one_test():
    split = assign_splits(_table(2), test_fraction=0.01, seed=0)["split"]
    assert sorted(split) == ["test", "train"]


def test_pairs_image_to_image_and_atlas_to_image():
    t = assign_splits(_table(6), test_fraction=0.34, seed=1)
    pairs = make_pairs(t, mode="image-to-image", seed=0)
    train = (t["split"] == "train").sum()
    assert (pairs["split"] == "train").sum() == train * (train - 1)
    assert all(m != tg for m, tg in zip(pairs["moving"], pairs["target"]))
    assert set(pairs["pair"]) == {f"{m}_to_{tg}" for m, tg in zip(pairs["moving"], pairs["target"])}
    atlas = make_pairs(t, mode="atlas-to-image", seed=0)
    assert set(atlas["moving"]) == {"atlas"} and len(atlas) == 6
    capped = make_pairs(t, mode="image-to-image", seed=3, max_train_pairs=5)
    assert (capped["split"] == "train").sum() == 5
    assert capped.equals(make_pairs(t, mode="image-to-image", seed=3, max_train_pairs=5))


def test_pairs_need_enough_test_subjects():
    t = _table(4)
    t["split"] = ["train", "train", "train", "test"]
    with pytest.raises(QsInputError, match="no test pairs: image-to-image pairing needs two or more test subjects"):
        make_pairs(t, mode="image-to-image", seed=0)


def test_demo_table_paths_and_splits():
    t = demo_table("results/demo", 8, test_fraction=0.25, seed=0)
    assert list(t["subject"]) == [f"sub-0{i}" for i in range(1, 9)]
    assert t.loc[0, "t1"] == "results/demo/sub-01/sub-01_T1w.nii.gz"
    assert (t["split"] == "test").sum() == 2


def _enumerated(subjects, limit, seed):
    """The pairs the way they were drawn before :func:`qs.cohort.ordered_pairs`: all enumerated, then sampled."""
    from itertools import permutations

    combos = list(permutations(subjects, 2))
    if limit and len(combos) > limit:
        keep = np.random.default_rng(seed).choice(len(combos), size=limit, replace=False)
        combos = [combos[k] for k in sorted(keep)]
    return combos


@pytest.mark.parametrize("n, limit, seed", [(2, 0, 0), (3, 4, [0, 1]), (5, 7, [3, 0]), (17, 40, 7), (40, 1, [1, 1]),
                                            (40, 2000, 0), (1, 5, 0), (0, 5, 0), (5, 19, 2), (5, 20, 2),
                                            # over 10,000 pairs: numpy draws a small sample by a set, a large by shuffling
                                            (120, 100, [0, 1]), (120, 5000, [4, 0])])
def test_ordered_pairs_draws_the_same_pairs_without_enumerating(n, limit, seed):
    from qs.cohort import ordered_pairs

    subjects = [f"s{k:02d}" for k in range(n)]
    assert ordered_pairs(subjects, limit, seed) == _enumerated(subjects, limit, seed)


def test_ordered_pairs_of_a_large_cohort():
    from qs.cohort import ordered_pairs

    subjects = [f"s{k:05d}" for k in range(20_000)]  # 4 x 10^8 ordered pairs: never listed
    pairs = ordered_pairs(subjects, 100, [0, 2])
    assert len(set(pairs)) == 100 and all(a != b for a, b in pairs)
    assert pairs == ordered_pairs(subjects, 100, [0, 2]) != ordered_pairs(subjects, 100, [1, 2])


def test_a_run_with_reused_models_needs_no_training_pairs():
    table = pd.DataFrame({"subject": ["a", "b", "c"], "split": ["test", "test", "test"]})
    with pytest.raises(QsInputError, match="no train pairs"):
        make_pairs(table, mode="image-to-image", seed=0)
    pairs = make_pairs(table, mode="image-to-image", seed=0, train_pairs_optional=True)
    assert set(pairs["split"]) == {"test"} and len(pairs) == 6
    with pytest.raises(QsInputError, match="no test pairs"):  # the reference pairs stay required
        make_pairs(table.assign(split="train"), mode="image-to-image", seed=0, train_pairs_optional=True)


def test_make_pairs_draws_the_pairs_it_drew_when_it_enumerated_them():
    """make_pairs' image-to-image pairs, per split and seed, equal those of the code that listed every pair first."""
    from itertools import permutations

    def enumerated(table, seed, limits):
        rows = []
        for index, split in enumerate(("train", "test")):
            combos = list(permutations(sorted(table.loc[table["split"] == split, "subject"]), 2))
            if limits[index] and len(combos) > limits[index]:
                keep = np.random.default_rng([seed, index]).choice(len(combos), size=limits[index], replace=False)
                combos = [combos[k] for k in sorted(keep)]
            rows += [{"pair": f"{m}_to_{t}", "moving": m, "target": t, "split": split} for m, t in combos]
        return pd.DataFrame(rows, columns=["pair", "moving", "target", "split"])

    table = assign_splits(_table(150), test_fraction=0.25, seed=0)  # 112 train subjects: 12,432 pairs
    for seed, limits in ((0, (0, 0)), (1, (8, 2)), (2, (200, 50)), (3, (7000, 3000))):
        pairs = make_pairs(table, mode="image-to-image", seed=seed, max_train_pairs=limits[0], max_test_pairs=limits[1])
        assert pairs.equals(enumerated(table, seed, limits))
