"""Settings that fit the hardware (``preset: cpu | gpu``, config/presets/) and the recipe that registers a cohort
with trained models and no reference pairs (``pairs.reference: false``)."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import ROOT, planned_jobs, snakemake
from snakemake.utils import validate

from qs import settings

PRESETS = ROOT / "config" / "presets"
DEMO_FILE = ROOT / "config" / "demo.yaml"
SCHEMA = str(ROOT / "qs" / "schemas" / "config.schema.yaml")


def _full(cfg: dict) -> dict:
    """``cfg`` with the schema's defaults filled in, as the workflow validates it."""
    cfg = copy.deepcopy(cfg)
    validate(cfg, SCHEMA)
    return cfg


def _run(user: dict) -> dict:
    return _full(settings.run_config(user, PRESETS, DEMO_FILE))


SHEET = {"cohort": {"source": "sheet", "sheet": "/data/subjects.tsv"}}


def test_the_demo_plans_as_with_its_budget_alone():
    """The demo cohort gets the cpu preset under config/demo.yaml: the same settings as the demo's budget alone."""
    cfg = _run({})
    assert cfg.pop("preset") == "cpu"
    before = _full(settings.with_demo_budget({}, DEMO_FILE))
    before.pop("preset")
    assert cfg == before


def test_the_cpu_preset_is_the_demos_recipe_sized_for_a_cohort():
    cfg = _run({**SHEET, "preset": "cpu"})
    demo = yaml.safe_load(DEMO_FILE.read_text())
    for section in ("lddmm", "train", "predict"):
        for key, value in demo[section].items():
            if key == "resources":
                assert value.items() <= cfg[section][key].items(), section
            else:
                assert cfg[section][key] == value, (section, key)
    assert cfg["evaluate"]["syn_variants"] == demo["evaluate"]["syn_variants"]
    assert cfg["register"]["method"] == demo["register"]["method"]
    own = yaml.safe_load((PRESETS / "cpu.yaml").read_text())
    assert cfg["pairs"]["max_train_pairs"] == own["pairs"]["max_train_pairs"] != demo["pairs"]["max_train_pairs"]
    assert cfg["cohort"]["source"] == "sheet" and cfg["cohort"]["test_fraction"] == settings.default("cohort.test_fraction")


@pytest.mark.parametrize("user", [{**SHEET, "preset": "gpu"}, SHEET], ids=["gpu", "no-preset"])
def test_the_gpu_preset_is_the_papers_settings_with_gpus(user):
    cfg = _run(user)
    assert cfg["preset"] == "gpu"
    for key in ("lddmm.iterations", "lddmm.time_steps", "lddmm.alpha", "train.architecture", "predict.samples",
                "pairs.max_train_pairs", "pairs.max_test_pairs", "evaluate.syn_variants"):
        assert settings.lookup(cfg, key) == settings.default(key), key
    for stage in ("lddmm", "train", "predict", "register"):
        assert cfg[stage]["resources"]["gpu"] == 1, stage
    assert cfg["preprocess"]["resources"]["gpu"] == 0 == cfg["evaluate"]["resources"]["gpu"]


def test_the_users_settings_win_over_the_preset():
    cfg = _run({**SHEET, "preset": "cpu", "lddmm": {"iterations": 7}, "train": {"resources": {"gpu": 1}}})
    assert cfg["lddmm"]["iterations"] == 7 and cfg["lddmm"]["coarse_iterations"] == 30
    assert cfg["train"]["resources"]["gpu"] == 1 and cfg["train"]["resources"]["threads"] == 2


def test_an_unknown_preset_is_refused(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("preset: tpu\n")
    run = snakemake("-n", "--configfile", str(cfg), cwd=tmp_path)
    assert run.returncode != 0 and "preset: 'tpu' is not one of" in run.output, run.output[-2000:]


def _sheet(tmp_path, subject_files, n=8):
    rows = ["subject\tt1\tlabels"]
    for k in range(1, n + 1):
        files = subject_files(f"s{k}")
        rows.append(f"s{k}\t{files['t1']}\t{files['labels']}")
    (tmp_path / "subjects.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path / "subjects.tsv"


def _dry(tmp_path, cfg: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return snakemake("-n", "-p", "--configfile", str(path), cwd=tmp_path)


def _commands(output, text):
    return [ln for ln in output.splitlines() if ln.startswith("Shell command:") and text in ln]


def test_a_sheet_cohort_with_each_preset_plans_its_settings(tmp_path, subject_files):
    sheet = _sheet(tmp_path, subject_files)
    cpu = _dry(tmp_path, {"preset": "cpu", "cohort": {"source": "sheet", "sheet": str(sheet)}})
    assert cpu.returncode == 0, cpu.output[-3000:]
    lddmm = _commands(cpu.output, " qs lddmm ")
    assert lddmm and all("--coarse-iterations 30 " in c and "--similarity lncc " in c and "--time-steps 3 " in c
                         for c in lddmm)
    assert all("--architecture dilated-match " in c for c in _commands(cpu.output, " qs train "))
    assert "train_correction" not in planned_jobs(cpu.output)  # the demo's recipe: predict+refine, no correction
    gpu = _dry(tmp_path, {"preset": "gpu", "cohort": {"source": "sheet", "sheet": str(sheet)}})
    assert gpu.returncode == 0, gpu.output[-3000:]
    lddmm = _commands(gpu.output, " qs lddmm ")
    assert lddmm and all("--iterations 100 " in c and "--similarity ssd " in c and "--time-steps 10 " in c for c in lddmm)
    assert all("--architecture quicksilver " in c for c in _commands(gpu.output, " qs train "))
    blocks = gpu.output.split("\nrule ")
    lddmm_jobs = [b for b in blocks if b.startswith("lddmm:")]
    assert lddmm_jobs and all("gpu=1" in b for b in lddmm_jobs)
    assert all("gpu=0" in b for b in blocks if b.startswith("preprocess:"))


# --- registering a cohort with trained models: no reference pairs --------------------------------------------


@pytest.fixture
def demo_model(tmp_path):
    """A prediction model file with the metadata training records for the demo config (no training)."""
    from qs.model_io import save_model
    from qs.net import network_class
    from qs.reuse import model_settings

    cfg = _run({})
    meta = {key: value for key, (_, value) in model_settings(cfg).items()}
    meta.update(kind="prediction", stride=14, train_pairs=8, train_patches=100, momentum_scale=1.0,
                trained_on={"cohort": "demo (8 subjects at 2.0 mm, seed 0)", "results": "/data/run1/results"})
    net = network_class(cfg["train"]["architecture"])(4, 0.2, 15)
    return save_model(net, meta, tmp_path / "model.safetensors")


def test_new_subjects_are_registered_with_a_trained_model_and_nothing_else(tmp_path, demo_model):
    """models.prediction + pairs.reference false + register.pairs: validation, pre-processing and one registration
    per subject; no LDDMM, no SyN, no training, no evaluation report."""
    cfg = {"models": {"prediction": str(demo_model)}, "pairs": {"reference": False},
           "register": {"pairs": "atlas-to-image"}}
    run = _dry(tmp_path, cfg)
    assert run.returncode == 0, run.output[-3000:]
    jobs = planned_jobs(run.output)
    assert jobs["register"] == jobs["preprocess"] == 9, jobs
    for rule in ("lddmm", "patches", "train_prediction", "syn", "predict", "predict_mc", "evaluate_pair", "report"):
        assert rule not in jobs, (rule, jobs)
    assert jobs["provenance"] == 1
    assert any("--no-reference-pairs" in c for c in _commands(run.output, "qs cohort-tables"))
    # auto follows the model: no correction network, the demo's refinement
    assert all("--refine 2 --refine-coarse 10" in c and "--correct" not in c
               for c in _commands(run.output, "qs register-pair"))


def test_without_reference_pairs_a_run_trains_and_registers_but_evaluates_nothing(tmp_path):
    run = _dry(tmp_path, {"pairs": {"reference": False}, "register": {"pairs": "atlas-to-image"}})
    assert run.returncode == 0, run.output[-3000:]
    jobs = planned_jobs(run.output)
    assert jobs["lddmm"] == 10 and jobs["train_prediction"] == 1 and jobs["register"] == 9, jobs
    assert not {"syn", "predict", "evaluate_pair", "report"} & set(jobs), jobs


def test_no_reference_pairs_and_no_registrations_is_refused(tmp_path):
    run = _dry(tmp_path, {"pairs": {"reference": False}})
    assert run.returncode != 0 and "pairs.reference is false" in run.output and "register.pairs" in run.output
