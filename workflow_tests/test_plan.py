"""``qs plan``: jobs per stage from a dry run and an order of magnitude of the CPU and GPU hours (qs.plan)."""

from __future__ import annotations

import yaml
from conftest import ROOT, planned_jobs, snakemake

from qs import cli
from qs.plan import Job, estimate, parse_jobs, plan

DRY_RUN = """Building DAG of jobs...
rule lddmm:
    input: a.nii.gz, b.nii.gz
    output: results/lddmm/a_to_b/summary.json
    wildcards: pair=a_to_b
    resources: tmpdir=/tmp, runtime=60, cpus_per_task=1, gpu=1, mem_mb=4000
rule train_prediction:
    input: p1.npy, p2.npy, p3.npy
    threads: 2
    resources: tmpdir=/tmp, gpu=0
localrule all:
    input: x
"""


def test_the_dry_runs_jobs_are_read_with_their_wildcards_threads_and_gpus():
    jobs = parse_jobs(DRY_RUN)
    assert [j.rule for j in jobs] == ["lddmm", "train_prediction"]
    assert jobs[0].wildcards == {"pair": "a_to_b"} and jobs[0].gpu == 1 and jobs[0].threads == 1
    assert jobs[1].inputs == 3 and jobs[1].threads == 2 and jobs[1].gpu == 0


def _config(architecture="dilated-match"):
    return {"preset": "cpu", "grid": {"spacing": 2.0}, "cohort": {"source": "sheet"}, "models": {"correction": ""},
            "lddmm": {"time_steps": 3, "iterations": 10, "coarse_iterations": 30},
            "train": {"architecture": architecture, "stride": 14, "epochs": 20, "features": 16, "correction": False},
            "predict": {"corrections": 1, "refine_iterations": 10, "refine_coarse_iterations": 10, "samples": 5,
                        "mirror_axes": [0, 1, 2]},
            "register": {"method": "auto"},
            "evaluate": {"syn_variants": ["syn-quick"], "syn_iterations": [100, 70, 50]}}


def test_the_figures_are_the_measured_ones():
    """The demo's settings give the measured per-job figures: LDDMM ~42 s per pair, predict+refine ~45 s."""
    rows = {r.rule: r for r in estimate([Job("lddmm"), Job("predict", {"method": "predict-refine"})], _config())}
    assert 35 < rows["lddmm"].cpu_h * 3600 < 50
    assert 35 < rows["predict"].cpu_h * 3600 < 55
    one_pass = _config()
    one_pass["predict"] = {**one_pass["predict"], "mirror_axes": [], "refine_iterations": 0, "refine_coarse_iterations": 0}
    single = estimate([Job("predict", {"method": "predict"})], one_pass)[0]
    assert 3 < single.cpu_h * 3600 < 4.5  # LPBA40: 3.5 s with one network pass (10.8 s with 8)
    gpu = {r.rule: r for r in estimate([Job("lddmm", gpu=1)], _config())}
    assert gpu["lddmm"].cpu_h == 0 < gpu["lddmm"].gpu_h and "assumed" in gpu["lddmm"].basis


def _sheet(tmp_path, subject_files, n=6):
    rows = ["subject\tt1"]
    for k in range(1, n + 1):
        rows.append(f"s{k}\t{subject_files(f's{k}', labels=False)['t1']}")
    (tmp_path / "subjects.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path / "subjects.tsv"


def test_qs_plan_counts_the_dry_runs_jobs_and_prices_each_preset(tmp_path, subject_files, capsys):
    sheet = _sheet(tmp_path, subject_files)
    texts = {}
    for preset in ("cpu", "gpu"):
        cfg = tmp_path / f"{preset}.yaml"
        cfg.write_text(yaml.safe_dump({"preset": preset, "cohort": {"source": "sheet", "sheet": str(sheet)},
                                       "register": {"pairs": "atlas-to-image"}}))
        texts[preset] = plan(snakefile=ROOT / "Snakefile", configfiles=[cfg], directory=tmp_path, cores=2)
        jobs = planned_jobs(snakemake("-n", "--configfile", str(cfg), cwd=tmp_path).output)
        rows = {ln.split()[0]: ln.split() for ln in texts[preset].splitlines()[3:] if ln[:1].isalpha()}
        for rule, count in jobs.items():
            if rule != "all":
                assert rows[rule][1] == str(count), (preset, rule, texts[preset])
        assert f"preset {preset}" in texts[preset]
    assert "GPU hours are CPU figures divided by assumed speed-ups" in texts["gpu"]
    assert "GPU hours are" not in texts["cpu"] and "CPU:" in texts["cpu"]
    # the command line prints the same
    assert cli.main(["plan", "--configfile", str(tmp_path / "cpu.yaml"), "--directory", str(tmp_path),
                     "--snakefile", str(ROOT / "Snakefile"), "--cores", "2"]) == 0
    assert capsys.readouterr().out.strip() == texts["cpu"].strip()


def test_a_config_that_does_not_plan_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tpu\n")
    assert cli.main(["plan", "--configfile", str(bad), "--directory", str(tmp_path),
                     "--snakefile", str(ROOT / "Snakefile")]) == 2
    assert "the dry run failed" in capsys.readouterr().err
