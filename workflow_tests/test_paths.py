"""Real jobs on a subject-sheet cohort whose folder and file names hold spaces, unicode, quotes and
shell syntax, with one subject in anisotropic voxels; and the input size limit reaching the jobs.

The paths reach every rule up to LDDMM (validation, atlas, pre-processing, LDDMM of one pair): were
one of them handed to a shell unquoted, the names would run ``touch PWNED...`` in the working folder.
(The tiny end-to-end run, ``tiny_run``, covers the rest of the DAG with such a results folder.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import TINY, snakemake

COHORT = "cohört ü;touch PWNED1;$(touch PWNED2) 'q' `touch PWNED3`"
SUBJECT_DIR = "{s} & touch PWNED4 #"


def _anisotropic(src, dst, *, labels=False):
    """Every other slice along voxel axis 2 of ``src``: the same field of view at twice the slice spacing."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj)[:, :, ::2]
    affine = img.affine.copy()
    affine[:3, 2] *= 2
    out = nib.Nifti1Image(data.astype(np.int32 if labels else np.float32), affine)
    nib.save(out, str(dst))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The demo's four subjects at 4 mm under :data:`COHORT`; ``sub-02`` (a training subject) in 4 x 4 x 8 mm voxels."""
    base = tmp_path_factory.mktemp("paths")
    demo = base / "demo"
    subprocess.run([sys.executable, "-c", "import sys; from qs.cli import main; sys.exit(main())", "demo", "--out",
                    str(demo), "--subjects", "4", "--spacing", "4", "--seed", "0"], check=True, capture_output=True)
    root = base / COHORT
    rows = ["subject\tt1\tlabels\tsplit"]
    for s, split in (("sub-01", "test"), ("sub-02", "train"), ("sub-03", "test"), ("sub-04", "train")):
        folder = root / SUBJECT_DIR.format(s=s)
        folder.mkdir(parents=True)
        for kind in ("T1w", "labels"):
            src, dst = demo / s / f"{s}_{kind}.nii.gz", folder / f"{s} ü'{kind}.nii.gz"
            if s == "sub-02":
                _anisotropic(src, dst, labels=kind == "labels")
            else:
                dst.write_bytes(src.read_bytes())
        rows.append(f"{s}\t{folder.name}/{s} ü'T1w.nii.gz\t{folder.name}/{s} ü'labels.nii.gz\t{split}")
    (root / "subjects.tsv").write_text("\n".join(rows) + "\n")
    return base, root / "subjects.tsv"


def _config(sheet, **extra):
    """The tiny config with the sheet cohort (in a config file: the workflow refuses quotes in --config)."""
    path = sheet.parent.parent / f"cohort{len(extra)}.yaml"
    path.write_text(yaml.safe_dump({"cohort": {"source": "sheet", "sheet": str(sheet)}, **extra}, allow_unicode=True))
    return ["--configfile", str(TINY), str(path)]


@pytest.mark.slow
def test_paths_with_shell_characters_and_anisotropic_voxels_run(cohort, tmp_path):
    base, sheet = cohort
    targets = [f"results/preprocessed/{s}/{s}_T1w.nii.gz" for s in ("sub-01", "sub-02", "sub-03", "sub-04")]
    targets += ["results/lddmm/sub-02_to_sub-04/summary.json", "results/cohort/subjects.tsv"]
    run = snakemake("--cores", "2", *targets, *_config(sheet), cwd=tmp_path)
    assert run.returncode == 0, run.output[-4000:]
    assert not list(tmp_path.rglob("PWNED*")) and not list(base.rglob("PWNED*")), "a path ran a command"
    res = tmp_path / "results"
    subjects = pd.read_csv(res / "cohort" / "subjects.tsv", sep="\t")
    assert subjects["t1"].str.contains(COHORT, regex=False).all()  # the names reached the jobs intact
    validated = json.loads((res / "validated" / "sub-02.json").read_text())
    assert validated["t1"]["spacing_mm"] == [4.0, 4.0, 8.0] and validated["t1"]["path"].endswith("sub-02 ü'T1w.nii.gz")
    atlas = nib.load(str(res / "atlas" / "atlas_T1w.nii.gz"))
    for s in ("sub-01", "sub-02"):  # the anisotropic subject lands on the isotropic working grid like the others
        t1 = nib.load(str(res / "preprocessed" / s / f"{s}_T1w.nii.gz"))
        assert t1.shape == atlas.shape and np.allclose(t1.affine, atlas.affine)
        qc = json.loads((res / "preprocessed" / s / f"{s}_preprocess.json").read_text())
        assert qc["ncc_with_atlas"] > 0.8, (s, qc)
        labels = np.asarray(nib.load(str(res / "preprocessed" / s / f"{s}_labels.nii.gz")).dataobj)
        assert labels.dtype == np.int32 and labels.max() > 1000
    lddmm = json.loads((res / "lddmm" / "sub-02_to_sub-04" / "summary.json").read_text())
    assert lddmm["detj_min"] > 0 and lddmm["energy"] < lddmm["energy_initial"]


@pytest.mark.slow
def test_the_size_limit_reaches_every_job(cohort, tmp_path):
    """``limits.max_voxels`` from the config reaches the jobs (the shell prefix exports QS_MAX_VOXELS)."""
    _, sheet = cohort
    run = snakemake("--cores", "1", "results/validated/sub-01.json", *_config(sheet, limits={"max_voxels": 1000}),
                    cwd=tmp_path)
    assert run.returncode != 0
    log = (tmp_path / "results" / "logs" / "validate" / "sub-01.log").read_text()
    assert log.startswith("qs: error: ") and "more than the limit of 1,000 voxels" in log and "sub-01 ü'T1w.nii.gz" in log
    assert not (tmp_path / "results" / "validated").exists() or not list((tmp_path / "results" / "validated").iterdir())


def test_a_qs_command_reads_the_limit_from_the_environment(tmp_path):
    from conftest import blob, write_nifti

    t1 = write_nifti(tmp_path / "s1_T1w.nii.gz", blob((12, 14, 10)))
    cmd = [sys.executable, "-c", "import sys; from qs.cli import main; sys.exit(main())", "validate", "--subject", "s1",
           "--t1", str(t1), "--out", str(tmp_path / "out.json")]
    small = subprocess.run(cmd, capture_output=True, text=True, env={"QS_MAX_VOXELS": "1679", "PATH": ""})
    assert small.returncode == 2 and "12 x 14 x 10 = 1,680 voxels" in small.stderr and "limit of 1,679" in small.stderr
    assert not (tmp_path / "out.json").exists()
    bad = subprocess.run(cmd, capture_output=True, text=True, env={"QS_MAX_VOXELS": "lots", "PATH": ""})
    assert bad.returncode == 2 and "QS_MAX_VOXELS='lots'" in bad.stderr
    fits = subprocess.run(cmd, capture_output=True, text=True, env={"QS_MAX_VOXELS": "1680", "PATH": ""})
    assert fits.returncode == 0, fits.stderr
    assert json.loads((tmp_path / "out.json").read_text())["t1"]["shape"] == [12, 14, 10]
