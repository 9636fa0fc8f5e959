"""The paper's experiments run end to end on the tiny config: the atlas-to-image mode with its report, the
ablation target (`snakemake ablation`) on that run's LDDMM, and multimodal T1 -> T2 prediction.

Two runs, each shared by its tests (module fixtures): atlas-to-image (then the ablation in the same folder)
and T1 -> T2.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY, planned_jobs, snakemake

from qs.model_io import read_meta

#: the ablation variants of the tiny run: a network, its correction and MC rows, and the deformation variant
ABLATION = """ablation:
  variants:
    - {field: momentum, epochs: 1}
    - {field: momentum, epochs: 1, correction: true}
    - {field: momentum, epochs: 1, samples: 2}
    - {field: deformation, epochs: 1}
"""
VARIANTS = ["momentum-stride14-1epochs", "momentum-stride14-1epochs-corrected", "momentum-stride14-1epochs-mc2",
            "deformation-stride14-1epochs"]


def _tsv(path):
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["NaN"])


@pytest.fixture(scope="module")
def atlas_run(tmp_path_factory):
    """The tiny config in atlas-to-image mode (one SyN variant, 2 MC samples), then `snakemake ablation`."""
    cwd = tmp_path_factory.mktemp("atlas_run")
    (cwd / "extra.yaml").write_text("pairs: {mode: atlas-to-image}\nevaluate: {syn_variants: [syn-quick]}\n"
                                    "predict: {samples: 2}\n" + ABLATION)
    args = ["--configfile", str(TINY), str(cwd / "extra.yaml")]
    run = snakemake("--cores", "2", *args, cwd=cwd)
    default_wrote_ablation = (cwd / "results" / "report" / "ablation.tsv").exists()
    # the target before the config files, which take every following word
    plan = snakemake("-n", "ablation", *args, cwd=cwd) if run.returncode == 0 else None
    ablation = snakemake("--cores", "2", "ablation", *args, cwd=cwd) if run.returncode == 0 else None
    return {"cwd": cwd, "res": cwd / "results", "args": args, "run": run, "plan": plan, "ablation": ablation,
            "default_wrote_ablation": default_wrote_ablation}


@pytest.fixture(scope="module")
def t2_run(tmp_path_factory):
    """The tiny config with T1 -> T2 networks (no SyN, no MC: the T1 -> T2 paths only)."""
    cwd = tmp_path_factory.mktemp("t2_run")
    (cwd / "extra.yaml").write_text("train: {target_contrast: T2}\nevaluate: {syn_variants: []}\n"
                                    "predict: {samples: 1, refine_iterations: 0, refine_coarse_iterations: 0}\n")
    run = snakemake("--cores", "2", "--configfile", str(TINY), str(cwd / "extra.yaml"), cwd=cwd)
    return {"cwd": cwd, "res": cwd / "results", "run": run}


@pytest.mark.slow
def test_atlas_to_image_run_reports_its_tables(atlas_run):
    run, res = atlas_run["run"], atlas_run["res"]
    assert run.returncode == 0, run.output[-6000:]
    pairs = _tsv(res / "cohort" / "pairs.tsv")
    subjects = _tsv(res / "cohort" / "subjects.tsv")
    assert (pairs["moving"] == "atlas").all() and sorted(pairs["target"]) == sorted(subjects["subject"])
    test = sorted(pairs.loc[pairs["split"] == "test", "pair"])
    assert test and all(p.startswith("atlas_to_sub-") for p in test)
    # the reference: LDDMM from the atlas (on the working grid) to each test subject
    for p in test:
        s = json.loads((res / "lddmm" / p / "summary.json").read_text())
        assert s["moving"].endswith("atlas/atlas_T1w.nii.gz") and s["target"].endswith(f"{p.split('_to_')[1]}_T1w.nii.gz")
    report = res / "report"
    errors = _tsv(report / "deformation_error.tsv").set_index("method")
    assert list(errors.index) == ["affine", "predict", "predict+correct", "predict+refine", "predict-mc"]
    assert (errors.loc["predict":, "detj_pos_pct"] == 100).all()  # shot transforms
    overlap = _tsv(report / "target_overlap.tsv")
    allrows = overlap[overlap["label"] == "all"]
    assert sorted(set(allrows["pair"])) == test
    assert set(allrows["method"]) == {"affine", "lddmm", "syn-quick", "predict", "predict+correct", "predict+refine",
                                      "predict-mc"}
    assert allrows["target_overlap"].between(0, 1).all()
    mean = allrows.groupby("method")["target_overlap"].mean()
    assert mean["lddmm"] > mean["affine"]  # the reference registers the atlas better than the affine alone
    timing = _tsv(report / "timing.tsv")
    assert sorted(set(timing["pair"])) == test and (timing["seconds"] > 0).all()
    assert f"Test pairs: {len(test)}." in (report / "summary.md").read_text()
    assert not atlas_run["default_wrote_ablation"]  # the ablation is not part of the default target


@pytest.mark.slow
def test_ablation_target_reuses_the_runs_lddmm_and_patches(atlas_run):
    plan = atlas_run["plan"]
    assert plan is not None and plan.returncode == 0, (plan or atlas_run["run"]).output[-3000:]
    jobs = planned_jobs(plan.output)
    assert "lddmm" not in jobs and "preprocess" not in jobs and "train_prediction" not in jobs
    train = (_tsv(atlas_run["res"] / "cohort" / "pairs.tsv")["split"] == "train").sum()
    test = (_tsv(atlas_run["res"] / "cohort" / "pairs.tsv")["split"] == "test").sum()
    # one patch set per field and stride, one network per field, stride and epochs, one correction network
    assert jobs["ablation_patches"] == 2 * train and jobs["ablation_train_prediction"] == 2
    assert jobs["ablation_correction_patches"] == train and jobs["ablation_train_correction"] == 1
    assert jobs["ablation_predict"] == len(VARIANTS) * test and jobs["ablation_evaluate"] == test


@pytest.mark.slow
def test_ablation_table_of_the_tiny_run(atlas_run):
    run = atlas_run["ablation"]
    assert run is not None and run.returncode == 0, (run or atlas_run["run"]).output[-6000:]
    res = atlas_run["res"]
    t = _tsv(res / "report" / "ablation.tsv").set_index("variant")
    assert list(t.index) == ["affine", *VARIANTS]
    assert (t.loc[VARIANTS, "train_s"] > 0).all() and (t.loc[VARIANTS, "predict_s"] > 0).all()
    assert t.loc[VARIANTS, "detj_pos_pct"].between(0, 100).all()
    assert t.loc["momentum-stride14-1epochs", "detj_pos_pct"] == 100  # shot
    assert t.loc["deformation-stride14-1epochs", "paper_row"] == "D, deformation, stride 14"
    assert t.loc["momentum-stride14-1epochs-mc2", "network"] == "P (2 samples)"
    # the affine row is the run's own (the same pairs, the same LDDMM)
    main = _tsv(res / "report" / "deformation_error.tsv").set_index("method")
    assert t.loc["affine", "p50"] == pytest.approx(main.loc["affine", "p50"], abs=1e-4)
    pair = sorted(p.name for p in (res / "ablation" / "evaluate").iterdir())[0]
    summary = lambda v: json.loads((res / "ablation" / "predict" / v / pair / "summary.json").read_text())  # noqa: E731
    assert summary("deformation-stride14-1epochs")["field"] == "deformation"
    assert not (res / "ablation" / "predict" / "deformation-stride14-1epochs" / pair / "m0.nii.gz").exists()
    assert summary("momentum-stride14-1epochs")["field"] == "momentum"
    corrected = summary("momentum-stride14-1epochs-corrected")
    assert corrected["corrected"] and corrected["corrections"] == 1 and corrected["mirror_axes"] == []
    assert summary("momentum-stride14-1epochs-mc2")["samples"] == 2
    assert summary("momentum-stride14-1epochs")["stride"] == 14  # the paper's: the training stride
    models = res / "ablation" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["deformation-stride14-1epochs", "momentum-stride14-1epochs"]
    assert read_meta(models / "deformation-stride14-1epochs" / "prediction" / "model.safetensors")["field"] == "deformation"
    assert (res / "report" / "ablation.png").stat().st_size > 10_000
    # both targets are complete now
    for target in (["ablation"], []):
        again = snakemake("-n", *target, *atlas_run["args"], cwd=atlas_run["cwd"])
        assert "Nothing to be done" in again.output, again.output[-3000:]


@pytest.mark.slow
def test_multimodal_t1_to_t2_run(t2_run):
    run, res = t2_run["run"], t2_run["res"]
    assert run.returncode == 0, run.output[-6000:]
    pairs = _tsv(res / "cohort" / "pairs.tsv")
    for p in pairs["pair"]:
        lddmm = json.loads((res / "lddmm" / p / "summary.json").read_text())
        assert lddmm["target"].endswith("_T1w.nii.gz")  # the momenta: T1 -> T1 LDDMM
    for p in pairs.loc[pairs["split"] == "test", "pair"]:
        for method in ("predict", "predict-correct"):
            s = json.loads((res / "predict" / method / p / "summary.json").read_text())
            assert s["target"].endswith("_T2w.nii.gz") and s["modality"] == "T1->T2"
    for kind in ("prediction", "correction"):
        assert read_meta(res / "models" / kind / "model.safetensors")["modality"] == "T1->T2"
    side = json.loads(next((res / "patches" / "correction").glob("*.json")).read_text())
    assert side["n_patches"] > 0
    errors = _tsv(res / "report" / "deformation_error.tsv").set_index("method")
    assert list(errors.index) == ["affine", "predict", "predict+correct"]
    assert (errors.loc[["predict", "predict+correct"], "detj_pos_pct"] == 100).all()
    overlap = _tsv(res / "report" / "target_overlap.tsv")
    assert {"lddmm", "predict", "predict+correct"} <= set(overlap["method"])
