"""Bad-input suite: malformed sheets, BIDS folders, images, labels, configs and model files.

Every case runs a real user-facing entry point as a subprocess (the ``qs``
console script, or ``snakemake -n``: dry runs only) on one malformed input
made in ``tmp_path``, and checks that it

* exits with a nonzero status,
* says what is wrong and names the offending file, with no Python traceback:
  one line ``qs: error: FILE: problem`` (``qs`` exits with status 2; the
  workflow prints the same line while planning, for sheets and BIDS
  folders). Config values are checked by Snakemake against
  ``qs/schemas/config.schema.yaml``; there the key and the problem are
  checked (:func:`qs.validate.config_error` makes that one line naming the
  config file, see the last test),
* leaves nothing behind: no file or folder appears anywhere under
  ``tmp_path`` (no partial output, no temporary file, no ``results/``).

Model files crafted to run code when unpickled are refused, and their
payload (which would create a marker file) never runs.

The table :data:`CASES` holds one row per case: ``(name, make, expect)``.
``make(tmp)`` writes the bad input and returns the command; the strings of
``expect`` must all appear in the output (``{tmp}`` stands for ``tmp_path``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, blob, write_nifti

SHAPE = (16, 16, 16)
MARKER = "payload_ran"  # the file a malicious pickle would create


def _qs_executable() -> list[str]:
    """The ``qs`` console script of this interpreter (as a user runs it)."""
    beside = Path(sys.executable).with_name("qs")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("qs")
    return [found] if found else [sys.executable, "-c", "import sys; from qs.cli import main; sys.exit(main())"]


QS = _qs_executable()


def qs(*args) -> list[str]:
    return [*QS, *map(str, args)]


def snakemake_dry(tmp, *args) -> list[str]:
    """``snakemake -n`` of the real workflow in ``tmp/work`` (a dry run: plans, runs no job)."""
    (tmp / "work").mkdir(exist_ok=True)
    return [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(tmp / "work"), *map(str, args)]


def sheet_config(path) -> list[str]:
    return ["--config", f"cohort={{source: sheet, sheet: {path}}}"]


def bids_config(path) -> list[str]:
    return ["--config", f"cohort={{source: bids, bids: {path}}}"]


# --------------------------------------------------------------------------
# Small valid inputs the bad ones are made from
# --------------------------------------------------------------------------


def image(path, seed=0, shape=SHAPE, affine=None):
    return write_nifti(path, blob(shape, seed=seed), affine=affine)


def labels(path, shape=SHAPE, affine=None):
    lab = np.zeros(shape, np.int32)
    lab[3:8, 3:12, 3:12] = 2035
    lab[8:13, 3:12, 3:12] = 1001
    return write_nifti(path, lab, affine=affine)


def pair(tmp):
    """A valid moving/target pair on one 16^3 grid."""
    return image(tmp / "moving.nii.gz", 0), image(tmp / "target.nii.gz", 1)


def subjects(tmp, names=("s1", "s2", "s3", "s4")):
    for k, s in enumerate(names):
        image(tmp / s / f"{s}_T1w.nii.gz", seed=k)


def write_sheet(path, text):
    path.write_text(text)
    return path


def bids_subject(root, sub, *, t1=True, t2=False):
    anat = root / sub / "anat"
    if t1:
        image(anat / f"{sub}_T1w.nii.gz")
    if t2:
        image(anat / f"{sub}_T2w.nii.gz", seed=1)
    anat.mkdir(parents=True, exist_ok=True)


def good_bids(root, n=8):
    for k in range(1, n + 1):
        bids_subject(root, f"sub-0{k}")
    return root


def real_model(path, **meta_changes):
    """A small valid prediction model file (features 4); ``meta_changes`` edit its metadata only."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from qs.model_io import save_model
    from qs.net import QuicksilverNet

    torch.manual_seed(0)
    run = dict(kind="prediction", stride=14, alpha=0.01, beta=0.01, gamma=0.001, time_steps=10, sigma=0.2,
               spacing=[1.0, 1.0, 1.0], modality="T1->T1", train_pairs=2, train_patches=8, momentum_scale=1.0)
    save_model(QuicksilverNet(features=4, dropout=0.2).eval(), run, path)
    if meta_changes:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["qs"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta.update(meta_changes)
        save_file(tensors, str(path), metadata={"qs": json.dumps(meta)})
    return path


class Payload:
    """Unpickling this object runs code: it creates the marker file."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').close()",))


def patch_files(folder):
    """Two pairs' valid training patch files (16^3 grid, 15^3 patches)."""
    from qs.patches import write_pair_patches

    rng = np.random.default_rng(0)
    for k in range(2):
        write_pair_patches(rng.random(SHAPE, np.float32), rng.random(SHAPE, np.float32),
                           rng.standard_normal((3, *SHAPE)).astype(np.float32), folder / f"p{k}.npy", stride=14)
    return folder


def predict(tmp, model, *extra):
    moving, target = pair(tmp)
    return qs("predict", "--model", model, "--moving", moving, "--target", target, "--out", tmp / "out",
              "--device", "cpu", *extra)


# --------------------------------------------------------------------------
# The cases: each returns the command to run on its bad input
# --------------------------------------------------------------------------

# --- subject sheets (snakemake -n: the workflow reads the sheet while planning)


def sheet_missing_column(tmp):
    subjects(tmp)
    sheet = write_sheet(tmp / "nocol.tsv", "subject\timage\n" + "".join(f"{s}\t{s}/{s}_T1w.nii.gz\n" for s in "s1 s2".split()))
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_duplicate_subject(tmp):
    subjects(tmp)
    sheet = write_sheet(tmp / "dup.tsv", "subject\tt1\ns1\ts1/s1_T1w.nii.gz\ns2\ts2/s2_T1w.nii.gz\ns1\ts3/s3_T1w.nii.gz\n")
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_labels_path_missing(tmp):
    subjects(tmp)
    sheet = write_sheet(tmp / "subjects.tsv", "subject\tt1\tlabels\n"
                        "s1\ts1/s1_T1w.nii.gz\ts1/s1_dseg.nii.gz\ns2\ts2/s2_T1w.nii.gz\ts2/s2_dseg.nii.gz\n")
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_comma_separated(tmp):
    subjects(tmp)
    sheet = write_sheet(tmp / "comma.tsv", "subject,t1\ns1,s1/s1_T1w.nii.gz\ns2,s2/s2_T1w.nii.gz\n")
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_empty_file(tmp):
    sheet = write_sheet(tmp / "empty.tsv", "")
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_header_only(tmp):
    sheet = write_sheet(tmp / "header.tsv", "subject\tt1\tsplit\n")
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_unknown_split(tmp):
    subjects(tmp)
    sheet = write_sheet(tmp / "split.tsv", "subject\tt1\tsplit\ns1\ts1/s1_T1w.nii.gz\ttrain\ns2\ts2/s2_T1w.nii.gz\tval\n")
    return snakemake_dry(tmp, *sheet_config(sheet))


# --- BIDS folders


def bids_no_subjects(tmp):
    root = tmp / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0"}\n')
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    return snakemake_dry(tmp, *bids_config(root))


def bids_subject_without_t1w(tmp):
    root = good_bids(tmp / "bids")
    bids_subject(root, "sub-09", t1=False, t2=True)  # a T2w but no T1w (misnamed T1?)
    return snakemake_dry(tmp, *bids_config(root))


def bids_participants_bad_split(tmp):
    root = good_bids(tmp / "bids")
    (root / "participants.tsv").write_text("participant_id\tsplit\nsub-01\ttrain\nsub-02\ttrain\nsub-03\ttest\nsub-04\tholdout\n")
    return snakemake_dry(tmp, *bids_config(root))


def bids_participants_without_id(tmp):
    root = good_bids(tmp / "bids")
    (root / "participants.tsv").write_text("subject\tsplit\nsub-01\ttrain\nsub-02\ttrain\nsub-03\ttest\nsub-04\ttest\n")
    return snakemake_dry(tmp, *bids_config(root))


# --- images (qs validate, qs lddmm)


def image_truncated(tmp):
    good = image(tmp / "full.nii.gz").read_bytes()
    (tmp / "full.nii.gz").unlink()
    (tmp / "trunc_T1w.nii.gz").write_bytes(good[: len(good) // 2])
    return qs("validate", "--subject", "s1", "--t1", tmp / "trunc_T1w.nii.gz", "--out", tmp / "out" / "s1.json")


def image_not_nifti(tmp):
    (tmp / "notes_T1w.nii.gz").write_text("subject s1, scanned 2024\n")
    return qs("validate", "--subject", "s1", "--t1", tmp / "notes_T1w.nii.gz", "--out", tmp / "out" / "s1.json")


def image_4d(tmp):
    write_nifti(tmp / "bold.nii.gz", np.ones((*SHAPE, 3), np.float32))
    return qs("validate", "--subject", "s1", "--t1", tmp / "bold.nii.gz", "--out", tmp / "out" / "s1.json")


def image_2d(tmp):
    moving, target = pair(tmp)
    write_nifti(tmp / "slice.nii.gz", np.ones(SHAPE[:2], np.float32))
    return qs("lddmm", "--moving", tmp / "slice.nii.gz", "--target", target, "--out", tmp / "out", "--iterations", 1)


def image_nan_voxels(tmp):
    moving, _ = pair(tmp)
    data = blob(SHAPE, seed=1)
    data[8, 8, 8] = np.nan
    write_nifti(tmp / "nan_target.nii.gz", data)
    return qs("lddmm", "--moving", moving, "--target", tmp / "nan_target.nii.gz", "--out", tmp / "out", "--iterations", 1)


def image_constant_t1(tmp):
    write_nifti(tmp / "flat_T1w.nii.gz", np.full(SHAPE, 7.0, np.float32))
    return qs("validate", "--subject", "s1", "--t1", tmp / "flat_T1w.nii.gz", "--out", tmp / "out" / "s1.json")


def grid_mismatch_moving_target(tmp):
    image(tmp / "moving.nii.gz")
    image(tmp / "target_small.nii.gz", seed=1, shape=(16, 16, 12))
    return qs("lddmm", "--moving", tmp / "moving.nii.gz", "--target", tmp / "target_small.nii.gz", "--out", tmp / "out",
              "--iterations", 1)


def grid_mismatch_t1_labels(tmp):
    image(tmp / "s1_T1w.nii.gz")
    shifted = np.eye(4)
    shifted[:3, 3] = [4.0, 0.0, 0.0]
    labels(tmp / "shifted_dseg.nii.gz", affine=shifted)
    return qs("validate", "--subject", "s1", "--t1", tmp / "s1_T1w.nii.gz", "--labels", tmp / "shifted_dseg.nii.gz",
              "--out", tmp / "out" / "s1.json")


# --- labels


def labels_empty(tmp):
    image(tmp / "s1_T1w.nii.gz")
    write_nifti(tmp / "empty_dseg.nii.gz", np.zeros(SHAPE, np.int16))
    return qs("validate", "--subject", "s1", "--t1", tmp / "s1_T1w.nii.gz", "--labels", tmp / "empty_dseg.nii.gz",
              "--out", tmp / "out" / "s1.json")


def labels_non_integer(tmp):
    moving, target = pair(tmp)
    write_nifti(tmp / "prob_dseg.nii.gz", blob(SHAPE) / 7.0)  # a probability map given as labels
    return qs("lddmm", "--moving", moving, "--target", target, "--labels", tmp / "prob_dseg.nii.gz",
              "--out", tmp / "out", "--iterations", 1)


def labels_negative_ids(tmp):
    image(tmp / "s1_T1w.nii.gz")
    lab = np.zeros(SHAPE, np.int16)
    lab[4:10, 4:10, 4:10] = -3
    write_nifti(tmp / "neg_dseg.nii.gz", lab)
    return qs("validate", "--subject", "s1", "--t1", tmp / "s1_T1w.nii.gz", "--labels", tmp / "neg_dseg.nii.gz",
              "--out", tmp / "out" / "s1.json")


def nifti_claiming(path, shape, payload=b"\0" * 4096):
    """A .nii.gz whose header claims ``shape`` (uint8) but which holds only ``payload`` after the header."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + payload)
    return path


def image_header_too_large(tmp):
    # a few kB on disk, 1024^3 voxels in the header: refused from the header, before decompression (were it
    # decompressed, the short payload would be reported as truncated instead)
    nifti_claiming(tmp / "huge_T1w.nii.gz", (1024, 1024, 1024))
    return qs("validate", "--subject", "s1", "--t1", tmp / "huge_T1w.nii.gz", "--out", tmp / "out" / "s1.json")


def image_zero_size_dimension(tmp):
    nifti_claiming(tmp / "flat_T1w.nii.gz", (16, 0, 16), payload=b"")
    return qs("validate", "--subject", "s1", "--t1", tmp / "flat_T1w.nii.gz", "--out", tmp / "out" / "s1.json")


def image_sheared_affine(tmp):
    sheared = np.eye(4)
    sheared[0, 1] = 0.3  # voxel axis 1 leans towards x: axes 0 and 1 meet at 73.3 degrees
    image(tmp / "sheared_T1w.nii.gz", affine=sheared)
    return qs("validate", "--subject", "s1", "--t1", tmp / "sheared_T1w.nii.gz", "--out", tmp / "out" / "s1.json")


def image_symlink_loop(tmp):
    (tmp / "a_T1w.nii.gz").symlink_to(tmp / "b_T1w.nii.gz")
    (tmp / "b_T1w.nii.gz").symlink_to(tmp / "a_T1w.nii.gz")
    return qs("validate", "--subject", "s1", "--t1", tmp / "a_T1w.nii.gz", "--out", tmp / "out" / "s1.json")


def labels_float_non_integer(tmp):
    image(tmp / "s1_T1w.nii.gz")
    lab = np.zeros(SHAPE, np.float32)
    lab[3:8, 3:12, 3:12] = 1001.0
    lab[8:13, 3:12, 3:12] = 2035.5  # stored as float, and not a whole number
    write_nifti(tmp / "float_dseg.nii.gz", lab)
    return qs("validate", "--subject", "s1", "--t1", tmp / "s1_T1w.nii.gz", "--labels", tmp / "float_dseg.nii.gz",
              "--out", tmp / "out" / "s1.json")


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def momentum_truncated(tmp):
    moving, target = pair(tmp)
    write_nifti(tmp / "m0.nii.gz", np.random.default_rng(0).standard_normal((*SHAPE, 3)).astype(np.float32))
    truncate(tmp / "m0.nii.gz")
    return qs("patches", "--moving", moving, "--target", target, "--momentum", tmp / "m0.nii.gz", "--pair", "a_to_b",
              "--out", tmp / "out" / "a_to_b.npy")


def warp_truncated(tmp):
    from qs.transforms import write_ants_displacement

    moving, target = pair(tmp)
    write_nifti(tmp / "mask.nii.gz", (blob(SHAPE) > 0).astype(np.uint8))
    disp = np.random.default_rng(0).standard_normal((3, *SHAPE)).astype(np.float32)
    write_ants_displacement(disp, np.eye(4), tmp / "lddmm" / "warp.nii.gz")
    truncate(tmp / "lddmm" / "warp.nii.gz")
    (tmp / "lddmm" / "summary.json").write_text('{"seconds": 1.0, "device": "cpu", "threads": 1}\n')
    return qs("evaluate-pair", "--pair", "a_to_b", "--lddmm", tmp / "lddmm", "--mask", tmp / "mask.nii.gz",
              "--out", tmp / "out")


def sheet_same_t1_twice(tmp):
    subjects(tmp)
    sheet = write_sheet(tmp / "twice.tsv", "subject\tt1\ns1\ts1/s1_T1w.nii.gz\ns2\ts2/s2_T1w.nii.gz\n"
                                           "s3\ts3/s3_T1w.nii.gz\ns4\ts2/s2_T1w.nii.gz\n")
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_same_file_by_link(tmp):
    subjects(tmp)
    (tmp / "s4" / "s4_T1w.nii.gz").unlink()
    (tmp / "s4" / "s4_T1w.nii.gz").symlink_to(tmp / "s1" / "s1_T1w.nii.gz")
    sheet = write_sheet(tmp / "linked.tsv", "subject\tt1\n" + "".join(f"{s}\t{s}/{s}_T1w.nii.gz\n" for s in ("s1", "s2", "s3", "s4")))
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_symlink_loop(tmp):
    subjects(tmp)
    (tmp / "s4" / "s4_T1w.nii.gz").unlink()
    (tmp / "s4" / "s4_T1w.nii.gz").symlink_to(tmp / "s4" / "s4_T1w.nii.gz")
    sheet = write_sheet(tmp / "loop.tsv", "subject\tt1\n" + "".join(f"{s}\t{s}/{s}_T1w.nii.gz\n" for s in ("s1", "s2", "s3", "s4")))
    return snakemake_dry(tmp, *sheet_config(sheet))


def sheet_path_with_braces(tmp):
    subjects(tmp)
    (tmp / "s4").rename(tmp / "s{4}")
    sheet = write_sheet(tmp / "braces.tsv", "subject\tt1\n" + "".join(f"{s}\t{d}/{s}_T1w.nii.gz\n" for s, d in
                                                                       (("s1", "s1"), ("s2", "s2"), ("s3", "s3"), ("s4", "s{4}"))))
    return snakemake_dry(tmp, *sheet_config(sheet))


# --- config (snakemake -n --configfile: validated against qs/schemas/config.schema.yaml)


def config_quote_on_the_command_line(tmp):
    return snakemake_dry(tmp, "--config", "results=it's")


def config_results_with_braces(tmp):
    return config_file(tmp, "results: 'out_{date}'\n")


def config_file(tmp, text):
    path = tmp / "my_config.yaml"
    path.write_text(text)
    return snakemake_dry(tmp, "--configfile", path)


def config_unknown_nested_key(tmp):
    return config_file(tmp, "lddmm:\n  iteration: 10\n")


def config_wrong_type(tmp):
    return config_file(tmp, "train:\n  epochs: ten\n")


def config_negative_value(tmp):
    return config_file(tmp, "lddmm:\n  iterations: -5\n")


def config_bad_choice(tmp):
    return config_file(tmp, "pairs:\n  mode: all-pairs\n")


def config_even_window(tmp):
    return config_file(tmp, "lddmm:\n  window: 4\n")


def config_not_yaml(tmp):
    return config_file(tmp, "grid: {spacing: [2,\n")


# --- model files (qs predict, qs train)


def model_pickle_pt(tmp):
    import torch

    torch.save({"state_dict": Payload(tmp / MARKER)}, tmp / "evil.pt")
    return predict(tmp, tmp / "evil.pt")


def model_pickle_named_safetensors(tmp):
    (tmp / "evil.safetensors").write_bytes(pickle.dumps({"state_dict": Payload(tmp / MARKER)}))
    return predict(tmp, tmp / "evil.safetensors")


def model_without_metadata(tmp):
    from safetensors.torch import save_file

    from qs.net import QuicksilverNet

    save_file({k: v.contiguous() for k, v in QuicksilverNet(4).state_dict().items()}, str(tmp / "bare.safetensors"))
    return predict(tmp, tmp / "bare.safetensors")


def model_wrong_shapes(tmp):
    real_model(tmp / "wide.safetensors", features=8)  # metadata says 8 features, the weights have 4
    return predict(tmp, tmp / "wide.safetensors")


def model_truncated(tmp):
    data = real_model(tmp / "full.safetensors").read_bytes()
    (tmp / "full.safetensors").unlink()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 3])
    return predict(tmp, tmp / "cut.safetensors")


def model_other_kernel(tmp):
    real_model(tmp / "model.safetensors")
    return predict(tmp, tmp / "model.safetensors", "--alpha", 0.05)


def patch_file_pickle(tmp):
    folder = patch_files(tmp / "patches")
    np.save(folder / "p1.npy", np.array([Payload(tmp / MARKER)], dtype=object), allow_pickle=True)
    return qs("train", folder, "--out", tmp / "model", "--features", 4, "--epochs", 1, "--spacing", 1,
              "--device", "cpu")


#: (name, make, expected substrings of the output); ``{tmp}`` is the case's tmp_path
CASES = [
    # subject sheets
    ("sheet-missing-column", sheet_missing_column, ["nocol.tsv", "missing required column(s) ['t1']"]),
    ("sheet-duplicate-subject", sheet_duplicate_subject, ["dup.tsv", "duplicate subject id(s): s1"]),
    ("sheet-labels-path-missing", sheet_labels_path_missing, ["subjects.tsv", "labels file", "s1_dseg.nii.gz", "does not exist"]),
    ("sheet-comma-separated", sheet_comma_separated, ["comma.tsv", "comma-separated", "tab-separated"]),
    ("sheet-empty-file", sheet_empty_file, ["empty.tsv", "the subject sheet is empty"]),
    ("sheet-header-only", sheet_header_only, ["header.tsv", "has no rows"]),
    ("sheet-unknown-split", sheet_unknown_split, ["split.tsv", "subject 's2'", "split must be 'train', 'test'", "'val'"]),
    ("sheet-same-t1-twice", sheet_same_t1_twice,
     ["twice.tsv", "subjects 's2' and 's4' use the same file {tmp}/s2/s2_T1w.nii.gz (t1 of 's2', t1 of 's4')"]),
    ("sheet-same-file-by-link", sheet_same_file_by_link, ["linked.tsv", "subjects 's1' and 's4' use the same file"]),
    ("sheet-symlink-loop", sheet_symlink_loop, ["loop.tsv", "subject 's4'", "broken symbolic link or a symbolic link loop"]),
    ("sheet-path-with-braces", sheet_path_with_braces, ["braces.tsv", "subject 's4'", "s{{4}}/s4_T1w.nii.gz", "contains '{{' '}}'"]),
    # BIDS
    ("bids-no-subjects", bids_no_subjects, ["{tmp}/bids", "no T1w images found"]),
    ("bids-subject-without-t1w", bids_subject_without_t1w, ["sub-09/anat", "no _T1w image", "sub-09_T2w.nii.gz"]),
    ("bids-participants-bad-split", bids_participants_bad_split, ["participants.tsv", "sub-04", "'holdout'"]),
    ("bids-participants-without-id", bids_participants_without_id, ["participants.tsv", "participant_id"]),
    # images
    ("image-truncated", image_truncated, ["trunc_T1w.nii.gz", "cannot read the voxels of T1 image: the file is truncated or damaged"]),
    ("image-header-too-large", image_header_too_large,
     ["huge_T1w.nii.gz", "T1 image header asks for 1024 x 1024 x 1024 = 1,073,741,824 voxels (4.0 GiB as float32), "
      "more than the limit of 268,435,456 voxels", "limits.max_voxels"]),
    ("image-zero-size-dimension", image_zero_size_dimension, ["flat_T1w.nii.gz", "zero-size dimension (shape (16, 0, 16))"]),
    ("image-sheared-affine", image_sheared_affine,
     ["sheared_T1w.nii.gz", "sheared (non-orthogonal) affine: voxel axes 0 and 1 meet at 73.30 degrees"]),
    ("image-symlink-loop", image_symlink_loop, ["a_T1w.nii.gz", "broken symbolic link or a symbolic link loop"]),
    ("momentum-truncated", momentum_truncated, ["m0.nii.gz", "cannot read the voxels of momentum: the file is truncated"]),
    ("warp-truncated", warp_truncated, ["lddmm/warp.nii.gz", "cannot read the voxels of displacement field: the file is truncated"]),
    ("image-not-nifti", image_not_nifti, ["notes_T1w.nii.gz", "cannot read T1 image as NIfTI"]),
    ("image-4d", image_4d, ["bold.nii.gz", "must be 3D", "(16, 16, 16, 3)"]),
    ("image-2d", image_2d, ["slice.nii.gz", "moving image must be 3D"]),
    ("image-nan-voxels", image_nan_voxels, ["nan_target.nii.gz", "1 NaN/Inf voxels"]),
    ("image-constant-t1", image_constant_t1, ["flat_T1w.nii.gz", "constant"]),
    ("grid-mismatch-moving-target", grid_mismatch_moving_target, ["target_small.nii.gz", "moving.nii.gz", "grid shape"]),
    ("grid-mismatch-t1-labels", grid_mismatch_t1_labels, ["shifted_dseg.nii.gz", "s1_T1w.nii.gz", "affine differs"]),
    # labels
    ("labels-empty", labels_empty, ["empty_dseg.nii.gz", "label image is empty"]),
    ("labels-non-integer", labels_non_integer, ["prob_dseg.nii.gz", "non-integer values"]),
    ("labels-float-non-integer", labels_float_non_integer, ["float_dseg.nii.gz", "non-integer values"]),
    ("labels-negative-ids", labels_negative_ids, ["neg_dseg.nii.gz", "label ids must be between 0", "found -3 to 0"]),
    # config
    ("config-unknown-key", config_unknown_nested_key, ["my_config.yaml", "lddmm: Additional properties", "'iteration' was unexpected"]),
    ("config-wrong-type", config_wrong_type, ["my_config.yaml", "train.epochs: 'ten' is not of type 'integer'"]),
    ("config-negative-value", config_negative_value, ["my_config.yaml", "lddmm.iterations: -5 is less than the minimum of 0"]),
    ("config-bad-choice", config_bad_choice, ["my_config.yaml", "pairs.mode: 'all-pairs' is not one of"]),
    ("config-even-window", config_even_window, ["my_config.yaml", "lddmm.window: 4 is not allowed (lncc window (voxels, odd))"]),
    ("config-not-yaml", config_not_yaml, ["not valid JSON or YAML"]),
    ("config-quote-on-the-command-line", config_quote_on_the_command_line,
     ["--config results=it's: a value with a quote (') cannot be given on the command line", "--configfile"]),
    ("config-results-with-braces", config_results_with_braces, ["config: results: 'out_{{date}}' contains '{{' '}}'"]),
    # model files
    ("model-pickle-pt", model_pickle_pt, ["evil.pt", "not a valid safetensors", "torch.save zip archive", "unpickling can run code"]),
    ("model-pickle-named-safetensors", model_pickle_named_safetensors, ["evil.safetensors", "not a valid safetensors", "a Python pickle"]),
    ("model-without-metadata", model_without_metadata, ["bare.safetensors", "without qs metadata"]),
    ("model-wrong-shapes", model_wrong_shapes, ["wide.safetensors", "weights do not fit the network"]),
    ("model-truncated", model_truncated, ["cut.safetensors", "not a valid safetensors"]),
    ("model-other-kernel", model_other_kernel, ["model.safetensors", "alpha: the model has 0.01, this run uses 0.05"]),
    ("patch-file-pickle", patch_file_pickle, ["p1.npy", "cannot read patch file"]),
]


def _files(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (Snakemake's own ``.snakemake`` bookkeeping aside), with sizes."""
    return {
        str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1
        for p in root.rglob("*")
        if ".snakemake" not in p.relative_to(root).parts
    }


def _run(cmd, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory):
    """Make the selected cases' inputs, then run their commands a few at a time (separate processes).

    Returns ``{name: (tmp, cmd, files before, completed process)}``; a case
    whose input could not be made holds the exception instead.
    """
    selected = {item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_bad_input_is_refused_cleanly"}
    prepared = {}
    for name, make, _ in CASES:
        if name in selected:
            tmp = tmp_path_factory.mktemp(name)
            try:
                prepared[name] = (tmp, make(tmp), _files(tmp))
            except Exception as exc:  # reported by that case's test
                prepared[name] = exc
    workers = min(4, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = {name: pool.submit(_run, case[1], case[0]) for name, case in prepared.items()
                if not isinstance(case, Exception)}
    return {name: case if isinstance(case, Exception) else (*case, runs[name].result())
            for name, case in prepared.items()}


def test_the_suite_is_large_and_distinct():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names)) >= 15
    assert len({c[1] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, make, expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(outcomes, name, make, expect):
    if isinstance(outcomes[name], Exception):
        raise outcomes[name]
    tmp, cmd, before, run = outcomes[name]
    output = run.stdout + run.stderr
    assert run.returncode != 0, f"{name}: accepted\n{output[-3000:]}"
    assert "Traceback" not in output, f"{name}: traceback\n{output[-3000:]}"
    for text in expect:
        assert text.format(tmp=tmp) in output, f"{name}: {text!r} not in\n{output[-3000:]}"
    if cmd[: len(QS)] == QS:
        assert run.returncode == 2 and run.stderr.startswith("qs: error: ") and run.stderr.count("\n") == 1, run.stderr
        assert run.stdout == ""
    elif "--config" in cmd:  # sheet and BIDS cases: the workflow's own one-line error
        assert "qs: error: " in output, output[-3000:]
    # nothing written: no partial output, no temporary file, no results folder
    assert _files(tmp) == before, f"{name}: files appeared: {set(_files(tmp)) - set(before)}"
    assert not (tmp / "out").exists() and not (tmp / "work" / "results").exists()
    assert not (tmp / MARKER).exists(), f"{name}: the payload of a pickled file ran"


def test_pickled_training_checkpoint_never_runs(tmp_path):
    """A ``checkpoint.pt`` crafted to run code is never unpickled by ``qs train``.

    Whether ``qs train`` then stops or starts over is its resume policy; either
    way it names the checkpoint, says it cannot be read, and the payload never runs.
    """
    import torch

    patch_files(tmp_path / "patches")
    (tmp_path / "model").mkdir()
    torch.save({"format": "qs-checkpoint-1", "model": Payload(tmp_path / MARKER)}, tmp_path / "model" / "checkpoint.pt")
    run = _run(qs("train", tmp_path / "patches", "--out", tmp_path / "model", "--features", 2, "--epochs", 1,
                  "--batch-size", 8, "--spacing", 1, "--device", "cpu"), tmp_path)
    output = run.stdout + run.stderr
    assert "Traceback" not in output, output[-3000:]
    assert "checkpoint.pt" in output and "cannot read training checkpoint" in output, output[-3000:]
    assert not (tmp_path / MARKER).exists()
    assert not [p for p in (tmp_path / "model").iterdir() if ".tmp" in p.name]


def test_config_error_is_one_line_naming_the_file_and_the_key():
    """:func:`qs.validate.config_error` turns Snakemake's schema error (a page with the whole schema) into one line."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    from qs.validate import config_error

    lines = []
    for bad in ({"lddmm": {"iterations": -5}}, {"lddmm": {"iteration": 10}}):
        with pytest.raises(WorkflowError) as info:
            validate(bad, schema=str(ROOT / "qs" / "schemas" / "config.schema.yaml"))
        lines.append(config_error(info.value, ["my_config.yaml"]))
    assert lines == [
        "qs: error: config (my_config.yaml): lddmm.iterations: -5 is less than the minimum of 0",
        "qs: error: config (my_config.yaml): lddmm: Additional properties are not allowed ('iteration' was unexpected)",
    ]
    assert config_error(WorkflowError("something else")) is None
