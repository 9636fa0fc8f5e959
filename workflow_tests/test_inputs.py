"""Bad images and labels: clear errors naming the file; atomic writes leave nothing behind."""

import os

import numpy as np
import pytest

from qs.cli import main
from qs.io import QsInputError, atomic_path, load_image, load_labels, save_array
from qs.validate import validate_subject

from conftest import blob, write_nifti


def test_missing_file(tmp_path):
    with pytest.raises(QsInputError, match=r"nope\.nii\.gz: T1 image file does not exist"):
        load_image(tmp_path / "nope.nii.gz", what="T1 image")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file")
    with pytest.raises(QsInputError, match=r"broken\.nii\.gz: cannot read image as NIfTI"):
        load_image(bad)


def test_not_3d(tmp_path):
    path = write_nifti(tmp_path / "four_d.nii.gz", np.ones((5, 5, 5, 3), np.float32))
    with pytest.raises(QsInputError, match=r"four_d\.nii\.gz: image must be 3D, got shape \(5, 5, 5, 3\)"):
        load_image(path)
    two_d = write_nifti(tmp_path / "two_d.nii.gz", np.ones((5, 5), np.float32))
    with pytest.raises(QsInputError, match="must be 3D"):
        load_image(two_d)


def test_trailing_singleton_dimension_is_accepted(tmp_path):
    path = write_nifti(tmp_path / "x.nii.gz", np.ones((5, 6, 7, 1), np.float32))
    assert load_image(path).shape == (5, 6, 7)


def test_nan_and_inf(tmp_path):
    data = blob()
    data[3, 3, 3] = np.nan
    data[4, 4, 4] = np.inf
    path = write_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(QsInputError, match=r"nan\.nii\.gz: image contains 2 NaN/Inf voxels"):
        load_image(path)


def test_labels_empty_noninteger_and_grid(tmp_path):
    ref_path = write_nifti(tmp_path / "t1.nii.gz", blob())
    empty = write_nifti(tmp_path / "empty.nii.gz", np.zeros((12, 14, 10), np.int16))
    with pytest.raises(QsInputError, match=r"empty\.nii\.gz: label image is empty"):
        load_labels(empty)
    frac = write_nifti(tmp_path / "frac.nii.gz", blob() / 7.0)
    with pytest.raises(QsInputError, match=r"frac\.nii\.gz: label image has non-integer values"):
        load_labels(frac)
    other = write_nifti(tmp_path / "other_grid.nii.gz", np.ones((12, 14, 11), np.int16))
    with pytest.raises(QsInputError, match=r"other_grid\.nii\.gz: grid shape \(12, 14, 11\) differs"):
        load_labels(other, reference=load_image(ref_path), reference_path=ref_path)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    moved = write_nifti(tmp_path / "moved.nii.gz", np.ones((12, 14, 10), np.int16), affine=shifted)
    with pytest.raises(QsInputError, match=r"moved\.nii\.gz: affine differs"):
        load_labels(moved, reference=load_image(ref_path), reference_path=ref_path)


def test_large_label_ids_survive_a_round_trip(tmp_path):
    lab = np.zeros((6, 6, 6), np.int32)
    lab[1:3] = 2035
    lab[3:5] = 16_777_217  # not representable in float32
    save_array(lab, np.eye(4), tmp_path / "lab.nii.gz")
    back = np.asarray(load_labels(tmp_path / "lab.nii.gz").dataobj)
    assert back.dtype == np.int32 and set(np.unique(back)) == {0, 2035, 16_777_217}


def test_constant_t1_is_refused(tmp_path):
    path = write_nifti(tmp_path / "flat.nii.gz", np.full((6, 6, 6), 3.0, np.float32))
    with pytest.raises(QsInputError, match=r"flat\.nii\.gz: T1 image is constant"):
        validate_subject("s", path)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "result.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent
            raise RuntimeError("killed")
    assert os.listdir(target.parent) == []


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    out = tmp_path / "v.json"
    code = main(["validate", "--subject", "s", "--t1", str(tmp_path / "missing.nii.gz"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("qs: error: ") and "missing.nii.gz: T1 image file does not exist" in err
    assert not out.exists()


def test_validate_summary(tmp_path, subject_files):
    files = subject_files("s1")
    report = validate_subject("s1", files["t1"], labels=files["labels"])
    assert report["t1"]["shape"] == [12, 14, 10] and report["t1"]["orientation"] == "RAS"
    assert report["labels"] == {"path": str(files["labels"]), "n_labels": 2, "max_id": 2035}
