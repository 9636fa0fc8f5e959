"""End-to-end: the real Snakemake workflow on the tiny demo config."""

import json
import os
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import (
    ROOT,
    TINY,
    TINY_RESULTS,
    checkout_changes,
    checkout_state,
    planned_jobs,
    snakemake,
    tiny_args,
)

from qs.model_io import read_meta


def test_checkout_guard_sees_every_change(tmp_path, request):
    """conftest.py's guard (checkout_left_alone) is on, and its snapshot compare reports each kind of change."""
    assert "checkout_left_alone" in request.fixturenames
    (tmp_path / "results" / "report").mkdir(parents=True)
    (tmp_path / "results" / "report" / "summary.md").write_text("finished")
    (tmp_path / "results" / "gone.tsv").write_text("a")
    (tmp_path / "elsewhere.txt").write_text("not watched")
    before = checkout_state(tmp_path)
    assert set(before) == {"results", "results/report", "results/report/summary.md", "results/gone.tsv"}
    assert checkout_changes(before, checkout_state(tmp_path)) == []
    os.utime(tmp_path / "results" / "report" / "summary.md", ns=(1, 1))  # same size and content, other mtime
    (tmp_path / "results" / "gone.tsv").unlink()
    (tmp_path / ".snakemake" / "log").mkdir(parents=True)
    (tmp_path / "elsewhere.txt").write_text("still not watched")
    changes = checkout_changes(before, checkout_state(tmp_path))
    assert [line.split(" (")[0] for line in changes] == [
        "appeared: .snakemake", "appeared: .snakemake/log", "removed: results/gone.tsv",
        "changed: results/report/summary.md"]


def test_lint_is_clean(tmp_path):
    run = snakemake("--lint", cwd=tmp_path)  # in tmp_path: lint writes a log into .snakemake/
    assert run.returncode == 0, run.output
    assert "Congratulations, your workflow is in a good condition!" in run.output


def test_workflow_files_are_snakefmt_clean():
    fmt = shutil.which("snakefmt")
    assert fmt, "snakefmt is missing: pip install -e '.[test]' installs it"
    run = subprocess.run([fmt, "--check", "--diff", "Snakefile", "rules"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_every_working_rule_has_log_benchmark_and_resources():
    """Each rule that runs a command (all but ``all``) logs, is benchmarked and states its resources."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "rules").glob("*.smk")))
    rules = re.split(r"^\s*rule (\w+):", text, flags=re.M)[1:]
    bodies = dict(zip(rules[::2], rules[1::2]))
    assert len(bodies) >= 17, sorted(bodies)
    missing = {name: [d for d in ("log:", "benchmark:", "resources:", "threads:") if f"    {d}" not in body]
               for name, body in bodies.items() if "shell:" in body}
    assert {name: m for name, m in missing.items() if m} == {}, missing


def test_default_config_plans_the_whole_dag(tmp_path):
    run = snakemake("-n", "--quiet", "rules", cwd=tmp_path)  # not in the checkout: a finished demo there plans nothing
    assert run.returncode == 0, run.output
    out = run.output
    # the demo: 9 subjects (3 test: 6 reference pairs, 10 training pairs); predict: predict and predict-refine
    # (the demo has no correction network); syn: syn-quick on the 6, syn on 2 (evaluate.syn_max_pairs)
    plan = {"builtin_atlas": 1, "demo": 1, "working_grid": 1, "cohort_tables": 1, "validate_subject": 9, "preprocess": 9,
            "lddmm": 16, "patches": 10, "train_prediction": 1, "predict": 12, "predict_mc": 6, "syn": 8,
            "evaluate_pair": 6, "provenance": 1, "report": 1, "all": 1}
    assert planned_jobs(out) == plan, out


def test_the_demo_registers_its_cohort_when_asked(tmp_path):
    """config/demo.yaml is consistent with itself: with register.pairs set, the demo plans its registrations
    (register.method auto: the demo trains no correction network, so predict+refine, the refinement's flags)."""
    run = snakemake("-n", "--config", "register={pairs: atlas-to-image}", cwd=tmp_path)
    assert run.returncode == 0, run.output[-3000:]
    assert planned_jobs(run.output)["register"] == 9, run.output
    commands = [ln for ln in run.output.splitlines() if "qs register-pair" in ln]
    assert len(commands) == 9 and all("--refine 2 --refine-coarse 10" in c and "--correct" not in c for c in commands)
    forced = snakemake("-n", "--config", "register={pairs: atlas-to-image, method: predict+correct}", cwd=tmp_path)
    assert forced.returncode != 0 and "no correction network" in forced.output


def test_malformed_config_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {spacing: -1}\n")
    run = snakemake("-n", "--configfile", str(bad), cwd=tmp_path)
    assert run.returncode != 0 and "spacing" in run.output
    typo = tmp_path / "typo.yaml"
    typo.write_text("grdi: {spacing: 2}\n")
    run = snakemake("-n", "--configfile", str(typo), cwd=tmp_path)
    assert run.returncode != 0 and "grdi" in run.output


def test_bad_sheet_stops_before_any_job(tmp_path):
    sheet = tmp_path / "subjects.tsv"
    sheet.write_text("subject\tt1\ns1\tmissing.nii.gz\n")
    run = snakemake("-n", "--config", f"cohort={{source: sheet, sheet: {sheet}}}", cwd=tmp_path)
    assert run.returncode != 0
    assert f"qs: error: {sheet}: subject 's1': t1 file" in run.output


def test_multimodal_option_trains_t1_to_t2_on_t1_momenta(tmp_path):
    run = snakemake("-n", "-p", "--configfile", str(TINY), "--config", "train={target_contrast: T2}", cwd=tmp_path)
    assert run.returncode == 0, run.output[-3000:]
    cmds = [line.removeprefix("Shell command: ") for line in run.output.splitlines() if line.startswith("Shell command: ")]
    lddmm = [c for c in cmds if " qs lddmm " in c]
    patches = [c for c in cmds if c.startswith("qs patches")]
    predict = [c for c in cmds if " qs predict " in c]
    assert lddmm and all("_T2w" not in c for c in lddmm)  # momenta from T1 -> T1
    assert patches and all("--target" in c and c.split("--target ")[1].split()[0].endswith("_T2w.nii.gz") for c in patches)
    assert predict and all(c.split("--target ")[1].split()[0].endswith("_T2w.nii.gz") for c in predict)
    train = [c for c in cmds if " qs train " in c]
    assert train and all("--modality 'T1->T2'" in c for c in train)  # quoted, or '>' redirects


def test_deformation_field_plans_no_correction_and_no_momentum_files(tmp_path):
    """train.field deformation (the paper's D, deformation rows): no correction network, the predictions write no
    m0.nii.gz (nothing is shot), and the cohort registrations, which need a shot transform, are refused."""
    extra = tmp_path / "deformation.yaml"
    extra.write_text("train: {field: deformation}\n")
    run = snakemake("-n", "--configfile", str(TINY), str(extra), cwd=tmp_path)
    assert run.returncode != 0 and "train.field is deformation" in run.output and "train.correction: false" in run.output
    extra.write_text("train: {field: deformation, correction: false}\n")  # the tiny config refines the predictions
    run = snakemake("-n", "--configfile", str(TINY), str(extra), cwd=tmp_path)
    assert run.returncode != 0 and "the refinement optimises a momentum" in run.output
    no_refine = "predict: {refine_iterations: 0, refine_coarse_iterations: 0}\n"
    extra.write_text("train: {field: deformation, correction: false}\n" + no_refine)
    run = snakemake("-n", "-p", "--configfile", str(TINY), str(extra), cwd=tmp_path)
    assert run.returncode == 0, run.output[-3000:]
    jobs = planned_jobs(run.output)
    assert jobs["predict"] == 2 and jobs["predict_mc"] == 2 and "correction_patches" not in jobs
    cmds = [line for line in run.output.splitlines() if line.startswith("Shell command: ")]
    assert any("--field deformation" in c and " qs patches " in f" {c.removeprefix('Shell command: ')}" for c in cmds)
    outputs = [line for line in run.output.splitlines() if line.strip().startswith("output: results/predict/")]
    assert outputs and all("m0.nii.gz" not in line and "warp.nii.gz" in line for line in outputs)
    extra.write_text("train: {field: deformation, correction: false}\nregister: {pairs: atlas-to-image, method: predict}\n"
                     + no_refine)
    run = snakemake("-n", "--configfile", str(TINY), str(extra), cwd=tmp_path)
    assert run.returncode != 0 and "register.pairs is atlas-to-image but train.field is deformation" in run.output


def test_multimodal_without_t2_is_refused(tmp_path, subject_files):
    for s in ("a", "b", "c", "d"):
        subject_files(s, labels=False)
    sheet = tmp_path / "subjects.tsv"
    sheet.write_text("subject\tt1\tsplit\n" + "".join(f"{s}\t{s}/{s}_T1w.nii.gz\t{'train' if s < 'c' else 'test'}\n" for s in "abcd"))
    run = snakemake("-n", "--config", f"cohort={{source: sheet, sheet: {sheet}}}", "train={target_contrast: T2}", cwd=tmp_path)
    assert run.returncode != 0 and "train.target_contrast is T2" in run.output


@pytest.mark.slow
def test_tiny_workflow_runs_the_whole_dag(tiny_run):
    tmp_path, run = tiny_run  # shared with test_resume.py (read only)
    assert run.returncode == 0, run.output[-6000:]
    res = tmp_path / TINY_RESULTS  # spaces, quotes and shell syntax: every rule's paths are quoted
    assert not [p for p in tmp_path.rglob("PWNED*")], "a path reached a shell unquoted and ran a command"
    subjects = pd.read_csv(res / "cohort" / "subjects.tsv", sep="\t", keep_default_na=False)
    pairs = pd.read_csv(res / "cohort" / "pairs.tsv", sep="\t")
    assert len(subjects) == 4 and set(subjects["split"]) == {"train", "test"}
    assert len(pairs) == 4  # 2 train subjects -> 2 ordered pairs, same for test
    atlas = nib.load(str(res / "atlas" / "atlas_T1w.nii.gz"))
    mask = np.asarray(nib.load(str(res / "atlas" / "atlas_mask.nii.gz")).dataobj) > 0
    for s in subjects["subject"]:
        d = res / "preprocessed" / s
        t1 = nib.load(str(d / f"{s}_T1w.nii.gz"))
        assert t1.shape == atlas.shape and np.allclose(t1.affine, atlas.affine)
        data = np.asarray(t1.dataobj)
        assert 0 <= data.min() and data.max() <= 1
        lab = np.asarray(nib.load(str(d / f"{s}_labels.nii.gz")).dataobj)
        assert lab.dtype == np.int32 and lab.max() > 1000
        qc = json.loads((d / f"{s}_preprocess.json").read_text())
        assert qc["ncc_with_atlas"] > 0.8, qc
        assert (d / f"{s}_qc.png").stat().st_size > 10_000
        assert (d / f"{s}_affine.mat").exists()
    report = res / "report"
    error = pd.read_csv(report / "deformation_error.tsv", sep="\t")
    assert list(error.columns) == ["method", "p0.3", "p5", "p25", "p50", "p75", "p95", "p99.7", "detj_pos_pct"]
    assert set(error["method"]) == {"affine", "predict", "predict+correct", "predict+refine", "predict-mc"}
    assert (error.set_index("method").loc[["predict", "predict+correct", "predict+refine", "predict-mc"],
                                          "detj_pos_pct"] == 100).all()
    overlap = pd.read_csv(report / "target_overlap.tsv", sep="\t", dtype={"label": str})
    assert list(overlap.columns) == ["pair", "method", "label", "target_overlap", "dice"]
    assert set(overlap["method"]) == {"affine", "lddmm", "syn", "syn-quick", "predict", "predict+correct",
                                      "predict+refine", "predict-mc"}
    for p in pairs.loc[pairs["split"] == "test", "pair"]:  # the refinement starts from the prediction and lowers its energy
        refined = json.loads((res / "predict" / "predict-refine" / p / "summary.json").read_text())
        plain = json.loads((res / "predict" / "predict" / p / "summary.json").read_text())
        r = refined["refine"]
        assert (r["iterations"], r["coarse_iterations"], r["similarity"]) == (2, 2, "lncc") and plain["refine"] is None
        assert r["energy"] < r["energy_start"] and refined["corrected"] is False
    timing = pd.read_csv(report / "timing.tsv", sep="\t")
    assert list(timing.columns) == ["pair", "method", "seconds", "device", "threads"]
    assert len(timing) and (timing["seconds"] > 0).all()
    for png in ("target_overlap.png", "deformation_error.png", "example_pair.png", "loss.png"):
        assert (report / png).stat().st_size > 10_000
    prov = json.loads((res / "provenance" / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["config_digest"][:16] in (report / "summary.md").read_text()
    for kind in ("prediction", "correction"):  # the modality reaches the model intact (no shell redirection)
        assert read_meta(res / "models" / kind / "model.safetensors")["modality"] == "T1->T1"
    assert not (tmp_path / "T1").exists()
    lddmm = json.loads((res / "lddmm" / pairs["pair"][0] / "summary.json").read_text())
    assert lddmm["detj_min"] > 0 and lddmm["energy"] < lddmm["energy_start"]  # the start: zero momentum, working grid
    # nothing half-written anywhere, and a second run has nothing to do
    assert not list(res.rglob("*.tmp*"))
    umask = os.umask(0)
    os.umask(umask)
    modes = {oct(p.stat().st_mode & 0o777) for p in res.rglob("*") if p.is_file()}
    assert modes == {oct(0o666 & ~umask)}, f"output modes {modes} under umask {oct(umask)}"  # as open() makes them
    again = snakemake("-n", "--cores", "2", *tiny_args(tmp_path), cwd=tmp_path)
    assert "Nothing to be done" in again.output
