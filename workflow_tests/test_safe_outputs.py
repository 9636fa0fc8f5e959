"""Safe outputs: NaN/Inf never pass silently, JSON is strict, files get the permissions of the umask.

* a model with NaN/Inf weights or out-of-range metadata is refused on load
  (one line naming the file and the key); a model whose finite weights make
  a NaN/Inf prediction stops ``qs predict`` before its first file;
* the writers refuse NaN/Inf (:func:`qs.io.save_array`, :func:`qs.io.write_json`)
  and write nothing;
* the files of real ``qs`` commands are strict JSON and get mode
  ``0666 & ~umask``, as files made by ``open``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import blob, write_nifti
from test_bad_inputs import qs, real_model
from qs.io import QsInputError, save_array, write_json
from qs.model_io import load_model, read_meta, save_model
from qs.net import QuicksilverNet

SHAPE = (16, 16, 16)
#: with momentum_scale 1e5 the untrained net's prediction moves by about a voxel: finite outputs
RUN = dict(kind="prediction", stride=14, alpha=0.01, beta=0.01, gamma=0.001, time_steps=5, sigma=0.2,
           spacing=[1.0, 1.0, 1.0], modality="T1->T1", train_pairs=2, train_patches=8, momentum_scale=1e5)


def model_file(path, change=None):
    """A small prediction model (4 features) written by save_model; ``change(net)`` edits its weights first."""
    torch.manual_seed(0)
    net = QuicksilverNet(features=4, dropout=0.2).eval()
    if change is not None:
        with torch.no_grad():
            change(net)
    return save_model(net, RUN, path)


def fill(value):
    return lambda net: [p.fill_(value) for p in net.parameters()]


def one_inf(net):
    next(net.parameters()).view(-1)[:1].fill_(math.inf)


def pair(tmp):
    """Moving and target images in [0, 1] on one 1 mm grid (the model's spacing)."""
    return [write_nifti(tmp / f"{name}.nii.gz", blob(SHAPE, seed=k) / 120) for k, name in enumerate(("moving", "target"))]


def run(cmd, tmp, umask=0o022):
    return subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(umask))


def strict_json(path):
    """``json.loads`` that refuses NaN/Infinity (as strict parsers, e.g. JavaScript's, do)."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


@pytest.mark.parametrize("change, expect", [
    (fill(math.nan), "NaN/Inf values"),        # refused on load
    (one_inf, "has 1 NaN/Inf values"),          # one Inf weight: refused on load
    (fill(1e30), "the predicted momentum has"),  # finite weights, Inf prediction: refused before writing
], ids=["nan-weights", "inf-weight", "huge-weights"])
def test_predict_refuses_a_model_that_gives_nan_and_writes_nothing(tmp_path, change, expect):
    model = model_file(tmp_path / "model.safetensors", change)
    moving, target = pair(tmp_path)
    before = files(tmp_path)
    done = run(qs("predict", "--model", model, "--moving", moving, "--target", target, "--out", tmp_path / "out",
                  "--device", "cpu"), tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.startswith("qs: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert expect in done.stderr and "Traceback" not in done.stderr
    assert str(model) in done.stderr
    assert files(tmp_path) == before  # no output folder, no file, no temporary file


def test_nan_weights_name_the_file_and_a_tensor(tmp_path):
    model = model_file(tmp_path / "model.safetensors", one_inf)
    first = next(iter(QuicksilverNet(4, 0.2).state_dict()))
    with pytest.raises(QsInputError, match=rf"^{model}: weight {first} has 1 NaN/Inf values \(1 in 1 tensors\)"):
        load_model(model)


@pytest.mark.parametrize("key, value", [
    ("patch", 0), ("features", -4), ("stride", 0), ("time_steps", 0), ("time_steps", 2.5), ("alpha", 0.0),
    ("gamma", -0.001), ("sigma", 0), ("beta", -1.0), ("spacing", [1.0, 0.0, 1.0]), ("spacing", "1mm"),
    ("momentum_scale", math.nan), ("momentum_scale", math.inf), ("momentum_scale", 0.0), ("dropout", 1.0),
    ("dropout", -0.1), ("train_pairs", -1), ("power", 0),
])
def test_out_of_range_metadata_is_refused_naming_file_and_key(tmp_path, key, value):
    model = real_model(tmp_path / "model.safetensors", **{key: value})
    for load in (read_meta, load_model):
        with pytest.raises(QsInputError) as err:
            load(model)
        message = str(err.value)
        assert message.startswith(f"{model}: model metadata {key}") and "\n" not in message, message


def test_nan_anywhere_in_the_metadata_is_refused(tmp_path):
    model = real_model(tmp_path / "model.safetensors", history={"final_val_l1": math.nan})
    with pytest.raises(QsInputError, match=r"metadata history\.final_val_l1 is nan"):
        read_meta(model)


def test_a_valid_model_still_loads(tmp_path):
    _, meta = load_model(model_file(tmp_path / "model.safetensors"))
    assert meta["momentum_scale"] == 1e5 and meta["patch"] == 15


# --------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------


def test_save_array_refuses_nan_and_writes_nothing(tmp_path):
    data = np.ones(SHAPE, np.float32)
    data[0, :2, :3] = np.nan
    data[1, 0, 0] = -np.inf
    path = tmp_path / "out" / "m0.nii.gz"
    with pytest.raises(QsInputError, match=rf"^{path}: the image to write has 7 NaN/Inf voxels"):
        save_array(data, np.eye(4), path)
    assert files(tmp_path) == []
    save_array(np.nan_to_num(data), np.eye(4), path)  # finite data are written
    assert files(tmp_path / "out") == [path.relative_to(tmp_path / "out")]


def test_write_json_refuses_nan_naming_the_key(tmp_path):
    path = tmp_path / "summary.json"
    with pytest.raises(QsInputError, match=rf"^{path}: a\.b\[1\] is inf, which strict JSON cannot hold"):
        write_json({"a": {"b": [1.0, math.inf]}}, path)
    with pytest.raises(QsInputError, match="detj_min is nan"):
        write_json({"detj_min": np.float32("nan")}, path)
    assert files(tmp_path) == []
    write_json({"a": [1.5, None, "x"]}, path)
    assert strict_json(path) == {"a": [1.5, None, "x"]}


def test_a_file_is_flushed_to_disk_before_its_rename(tmp_path, monkeypatch):
    import qs.io

    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(qs.io.os, "fsync", lambda fd: (calls.append("fsync"), fsync(fd))[1])
    monkeypatch.setattr(qs.io.os, "replace", lambda a, b: (calls.append("replace"), replace(a, b))[1])
    qs.io.write_text("x\n", tmp_path / "a.tsv")
    assert calls == ["fsync", "replace"]


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_a_model_file_gets_the_umask_mode(tmp_path, umask):
    """safetensors' own file writer makes 0600 files: qs writes the bytes itself."""
    old = os.umask(umask)
    try:
        path = model_file(tmp_path / "models" / "model.safetensors")
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]
    load_model(path)  # the bytes are a valid model file


# --------------------------------------------------------------------------
# Real commands: strict JSON, modes from the umask
# --------------------------------------------------------------------------


@pytest.mark.parametrize("command, umask", [("predict", 0o002), ("predict", 0o022), ("patches", 0o022)],
                         ids=["predict-umask002", "predict-umask022", "patches-umask022"])
def test_command_outputs_are_strict_json_with_the_umask_modes(tmp_path, command, umask):
    moving, target = pair(tmp_path)
    out = tmp_path / "out"
    if command == "predict":
        cmd = qs("predict", "--model", model_file(tmp_path / "model.safetensors"), "--moving", moving,
                 "--target", target, "--out", out, "--device", "cpu")
        expect = {"m0.nii.gz", "warp.nii.gz", "warped.nii.gz", "summary.json"}
    else:
        m0 = save_array(np.random.default_rng(0).standard_normal((*SHAPE, 3)), np.eye(4), tmp_path / "m0.nii.gz")
        cmd = qs("patches", "--moving", moving, "--target", target, "--momentum", m0, "--out", out / "pair.npy")
        expect = {"pair.npy", "pair.json"}
    done = run(cmd, tmp_path, umask)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == expect  # no temporary file left
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, (path.name, oct(path.stat().st_mode))
        if path.suffix == ".json":
            assert strict_json(path)
    if command == "predict":
        summary = strict_json(out / "summary.json")
        assert all(math.isfinite(summary[k]) for k in ("detj_min", "detj_max", "seconds"))
