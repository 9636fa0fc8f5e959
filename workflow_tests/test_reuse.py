"""Reusable models and cohort registrations (config ``models``, ``register``), end to end.

The tiny run (``tiny_run``) trains both networks; a second run on another demo cohort (another seed) reuses
them (``models.*``) and registers the atlas to every subject (``register.pairs: atlas-to-image``): no
training, no LDDMM beyond its reference pair, and outputs that ANTs alone carries between the spaces.
"""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml
from conftest import TINY, TINY_RESULTS, planned_jobs, snakemake

ants = pytest.importorskip("ants")


def _models(tiny_run):
    cwd, run = tiny_run
    assert run.returncode == 0, run.output[-3000:]
    return {k: str(cwd / TINY_RESULTS / "models" / k / "model.safetensors") for k in ("prediction", "correction")}


def _config(folder, models, **extra):
    cfg = {
        "seed": 1,  # another demo cohort: other subjects' deformations, other splits
        "cohort": {"demo": {"subjects": 4}},
        "models": models,
        "register": {"pairs": "atlas-to-image", "method": "predict+correct"},
        "pairs": {"max_test_pairs": 1},
        "predict": {"samples": 0},
        "evaluate": {"syn_variants": ["syn-quick"]},
    }
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = folder / "reuse.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return ["--configfile", str(TINY), str(path)]


@pytest.fixture(scope="session")
def reuse_run(tiny_run, tmp_path_factory):
    """The second run: (working directory, finished run, its models)."""
    models = _models(tiny_run)
    cwd = tmp_path_factory.mktemp("reuse_run")
    return cwd, snakemake("--cores", "2", *_config(cwd, models), cwd=cwd), models


def test_reuse_runs_no_training_and_no_lddmm_for_registrations(reuse_run):
    cwd, run, _ = reuse_run
    assert run.returncode == 0, run.output[-4000:]
    jobs = planned_jobs(run.output)
    assert jobs["register"] == 4  # the atlas to each of the 4 subjects
    assert jobs["lddmm"] == 1  # the one reference pair only
    for rule in ("patches", "train_prediction", "correction_patches", "train_correction"):
        assert rule not in jobs
    assert not (cwd / "results" / "models").exists()
    subjects = [f"sub-0{k}" for k in range(1, 5)]
    assert sorted(p.name for p in (cwd / "results" / "registrations").iterdir()) == [f"atlas_to_{s}" for s in subjects]
    pairs = (cwd / "results" / "cohort" / "pairs.tsv").read_text().splitlines()
    test_pairs = [row.split("\t")[0] for row in pairs[1:] if row.split("\t")[3] == "test"]
    assert [p.name for p in (cwd / "results" / "lddmm").iterdir()] == test_pairs  # reference pairs only


def test_report_names_the_run_that_trained_the_models(reuse_run):
    cwd, run, _ = reuse_run
    assert run.returncode == 0, run.output[-4000:]
    summary = (cwd / "results" / "report" / "summary.md").read_text()
    line = next(ln for ln in summary.splitlines() if ln.startswith("- prediction model:"))
    assert "demo (4 subjects at 4.0 mm, seed 0)" in line  # the tiny run's cohort, not this run's (seed 1)
    assert TINY_RESULTS.split("|")[0] in line  # the run that trained them (Markdown escapes its '|')


def _transforms(path):
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    return [str(path.parent / ln) for ln in lines if ln and not ln.startswith("#")]


def test_registration_outputs_reproduce_with_ants_alone(reuse_run):
    cwd, run, _ = reuse_run
    assert run.returncode == 0, run.output[-4000:]
    folder = cwd / "results" / "registrations" / "atlas_to_sub-02"
    subject_t1 = cwd / "results" / "demo" / "sub-02" / "sub-02_T1w.nii.gz"
    atlas_t1 = cwd / "results" / "atlas" / "atlas_T1w.nii.gz"
    summary = yaml.safe_load((folder / "summary.json").read_text())
    assert summary["method"] == "predict+correct" and summary["detj_min"] > 0

    # forward: the atlas (moving) on the subject's own grid; warp.nii.gz lives on that grid
    fixed, moving = ants.image_read(str(subject_t1)), ants.image_read(str(atlas_t1))
    tl = _transforms(folder / "transforms.txt")
    assert [p.split("/")[-1] for p in tl] == ["warp.nii.gz", "affine.mat"]
    ours = nib.load(folder / "warped.nii.gz")
    assert ours.shape == nib.load(subject_t1).shape and np.allclose(ours.affine, nib.load(subject_t1).affine)
    theirs = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=tl, whichtoinvert=[False, False]).numpy()
    assert np.abs(theirs - ours.get_fdata()).max() < 1e-3 * np.abs(theirs).max()
    # the atlas labels reach the subject's native space, ids exact
    labels = nib.load(folder / "warped_labels.nii.gz")
    atlas_ids = set(np.unique(nib.load(cwd / "results" / "atlas" / "atlas_labels.nii.gz").dataobj))
    assert labels.get_data_dtype() == np.int32 and set(np.unique(labels.dataobj)) <= atlas_ids

    # inverse: the subject (moving of the inverse) on the atlas grid
    tl_inv = _transforms(folder / "inverse_transforms.txt")
    inv = nib.load(folder / "inverse_warped.nii.gz")
    assert inv.shape == nib.load(atlas_t1).shape
    theirs = ants.apply_transforms(fixed=moving, moving=fixed, transformlist=tl_inv,
                                   whichtoinvert=[False, False]).numpy()
    assert np.abs(theirs - inv.get_fdata()).max() < 1e-3 * np.abs(theirs).max()

    # inverse consistency: atlas labels to the subject and back again land where they started
    back = ants.apply_transforms(fixed=moving, moving=ants.image_read(str(folder / "warped_labels.nii.gz")),
                                 transformlist=tl_inv, whichtoinvert=[False, False],
                                 interpolator="nearestNeighbor").numpy().round()
    start = np.asarray(nib.load(cwd / "results" / "atlas" / "atlas_labels.nii.gz").dataobj)
    inside = start > 0
    assert (back[inside] == start[inside]).mean() > 0.9  # 0.985 measured at 4 mm


@pytest.mark.parametrize("setting, value, message", [
    ("grid", {"spacing": 3.0}, "grid.spacing: the model has [4.0, 4.0, 4.0], the config has [3.0, 3.0, 3.0]"),
    ("preprocess", {"normalize": "max"}, "preprocess.normalize: the model has 'percentile', the config has 'max'"),
])
def test_a_model_that_does_not_fit_is_refused_before_any_work(tiny_run, tmp_path, setting, value, message):
    models = _models(tiny_run)
    run = snakemake("--cores", "1", *_config(tmp_path, models, **{setting: value}), cwd=tmp_path)
    assert run.returncode != 0
    errors = [ln for ln in run.output.splitlines() if ln.startswith("qs: error:")]
    assert len(errors) == 1 and message in errors[0] and "model.safetensors" in errors[0], run.output[-2000:]
    assert not (tmp_path / "results").exists()


def test_models_correction_without_prediction_is_refused(tmp_path, tiny_run):
    models = _models(tiny_run)
    run = snakemake("-n", *_config(tmp_path, {"prediction": "", "correction": models["correction"]}), cwd=tmp_path)
    assert run.returncode != 0 and "models.correction is set but models.prediction is empty" in run.output


def test_a_copied_model_keeps_working(tiny_run, tmp_path):
    """A model file is self-contained: copied elsewhere (another machine, a shared folder) it plans the same."""
    models = _models(tiny_run)
    for kind, path in models.items():
        shutil.copy(path, tmp_path / f"{kind}.safetensors")
    copied = {kind: str(tmp_path / f"{kind}.safetensors") for kind in models}
    run = snakemake("-n", *_config(tmp_path, copied), cwd=tmp_path)
    assert run.returncode == 0, run.output[-2000:]
    jobs = planned_jobs(run.output)
    assert jobs["register"] == 4 and "train_prediction" not in jobs


# --- what a reused model must match (qs.reuse), without the workflow ----------------------------------------


def _run_config(**changes):
    """A full config as the workflow sees it: the demo's budget, the schema's defaults, then ``changes``."""
    from conftest import ROOT
    from snakemake.utils import validate

    from qs.settings import with_demo_budget

    cfg = with_demo_budget({}, ROOT / "config" / "demo.yaml")
    validate(cfg, str(ROOT / "qs" / "schemas" / "config.schema.yaml"))
    for key, value in changes.items():
        group, name = key.split(".")
        cfg[group][name] = value
    return cfg


@pytest.fixture
def fitting_model(tmp_path):
    """A model file saved with the metadata training records for the demo config."""
    from qs.model_io import save_model
    from qs.net import network_class
    from qs.reuse import model_settings

    cfg = _run_config()
    meta = {key: value for key, (_, value) in model_settings(cfg).items()}
    meta.update(kind="prediction", stride=14, train_pairs=8, train_patches=100, momentum_scale=1.0,
                trained_on={"cohort": "demo (8 subjects at 2.0 mm, seed 0)", "results": "/data/run1/results"})
    net = network_class(cfg["train"]["architecture"])(4, 0.2, 15)
    return save_model(net, meta, tmp_path / "model.safetensors")


def test_a_fitting_model_passes_and_says_where_it_comes_from(fitting_model):
    from qs.reuse import check_model_fits, trained_on

    meta = check_model_fits(fitting_model, "prediction", _run_config())
    assert trained_on(meta) == "cohort demo (8 subjects at 2.0 mm, seed 0) (training pairs: 8), run /data/run1/results"


@pytest.mark.parametrize("key, value, shown", [
    ("grid.spacing", 1.0, "grid.spacing: the model has [2.0, 2.0, 2.0], the config has [1.0, 1.0, 1.0]"),
    ("grid.margin_mm", 4.0, ("atlas: the model has 'builtin MNI ICBM152 2009a, margin 8.0 mm', the config has "
                             "'builtin MNI ICBM152 2009a, margin 4.0 mm'")),
    ("preprocess.normalize", "histeq", "preprocess.normalize: the model has 'percentile', the config has 'histeq'"),
    ("lddmm.alpha", 0.01, "lddmm.alpha: the model has 0.08, the config has 0.01"),
    ("lddmm.time_steps", 10, "lddmm.time_steps: the model has 3, the config has 10"),
    ("lddmm.sigma", 0.1, "lddmm.sigma: the model has 0.2, the config has 0.1"),
    ("train.field", "momentum", "train.field: the model has 'velocity', the config has 'momentum'"),
    ("train.architecture", "dilated", "train.architecture: the model has 'dilated-match', the config has 'dilated'"),
    ("train.target_contrast", "T2", "train.target_contrast: the model has 'T1->T1', the config has 'T1->T2'"),
])
def test_each_setting_a_model_is_tied_to_is_checked(fitting_model, key, value, shown):
    from qs.io import QsInputError
    from qs.reuse import check_model_fits

    with pytest.raises(QsInputError) as info:
        check_model_fits(fitting_model, "prediction", _run_config(**{key: value}))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{fitting_model}: ") and shown in message


def test_an_atlas_from_files_is_told_apart_by_its_content(fitting_model, tmp_path):
    from qs.io import QsInputError
    from qs.reuse import atlas_identity, check_model_fits

    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    a.write_bytes(b"atlas one")
    b.write_bytes(b"atlas two")
    cfg = _run_config(**{"atlas.source": "files", "atlas.t1": str(a)})
    assert atlas_identity(cfg) != atlas_identity(_run_config(**{"atlas.source": "files", "atlas.t1": str(b)}))
    assert atlas_identity(cfg) == atlas_identity(_run_config(**{"atlas.source": "files", "atlas.t1": str(a)}))
    with pytest.raises(QsInputError, match="atlas: the model has 'builtin MNI ICBM152 2009a, margin 8.0 mm', "
                                           "the config has 'sha256:"):
        check_model_fits(fitting_model, "prediction", cfg)


def test_the_wrong_kind_of_model_is_refused(fitting_model):
    from qs.io import QsInputError
    from qs.reuse import check_model_fits

    with pytest.raises(QsInputError, match="models.correction is a prediction model"):
        check_model_fits(fitting_model, "correction", _run_config())


def test_trained_models_record_what_a_reuse_needs(tiny_run):
    from qs.model_io import read_meta

    for path in _models(tiny_run).values():
        meta = read_meta(path)
        assert meta["normalize"] == "percentile" and meta["atlas"] == "builtin MNI ICBM152 2009a, margin 4.0 mm"
        assert meta["trained_on"]["cohort"] == "demo (4 subjects at 4.0 mm, seed 0)"
        assert meta["trained_on"]["results"].endswith(TINY_RESULTS)


def test_image_to_image_registrations_are_a_seeded_sample_of_the_whole_cohort(tiny_run, tmp_path):
    models = _models(tiny_run)
    args = _config(tmp_path, models, register={"pairs": "image-to-image", "max_pairs": 5, "method": "predict"})
    run = snakemake("-n", "-p", *args, cwd=tmp_path)
    assert run.returncode == 0, run.output[-2000:]
    assert planned_jobs(run.output)["register"] == 5  # of 4 x 3 ordered pairs, train and test subjects alike
    commands = [ln for ln in run.output.splitlines() if "qs register-pair" in ln]
    assert len(commands) == 5 and not any("--inverse" in c or "--correct" in c for c in commands)
    again = snakemake("-n", *args, cwd=tmp_path)  # another process: the same seeded sample

    def registered(output):
        return sorted(ln.strip() for ln in output.splitlines() if ln.strip().startswith("output:")
                      and "/registrations/" in f"/{ln.split('output:')[1].strip()}")

    assert len(registered(run.output)) == 5 and registered(again.output) == registered(run.output)
