"""Training: the loss falls on learnable synthetic data; checkpoints resume bit-exactly."""

import json
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter, map_coordinates

from qs.checkpoint import load_checkpoint
from qs.io import QsInputError
from qs.losses import lowpass, momentum_loss
from qs.model_io import load_model
from qs.patches import PatchDataset, write_pair_patches
from qs.train import split_validation, train

META = dict(alpha=0.01, beta=0.01, gamma=0.001, time_steps=10, sigma=0.2, spacing=[1.0, 1.0, 1.0],
            modality="T1->T1")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: fast on a shared 2-core machine, same numerics as the subprocess below."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_pair(rng, n=24):
    """A synthetic pair and a momentum the network can learn in a few hundred steps.

    Moving: smoothed noise in a ball, intensities in [0, 1]. Target: moving
    warped by a smooth random displacement (about 1 voxel). Momentum: the
    gradient of the smoothed ``moving + target / 2``: image-gradient shaped
    like LDDMM's momentum, smooth enough for the network's 5^3 bottleneck,
    and a function of both inputs that a 4-feature net learns in about a
    hundred steps (the true m0, which hinges on the small difference of the
    images, takes a bigger net and far more steps).
    """
    img = gaussian_filter(rng.random((n, n, n)), 1.5)
    img = (img - img.min()) / (img.max() - img.min())
    c = np.indices((n, n, n)) - (n - 1) / 2
    img = (img * ((c**2).sum(0) < (0.42 * n) ** 2)).astype(np.float32)
    u = gaussian_filter(rng.standard_normal((3, n, n, n)), (0, 4, 4, 4))
    u = u / np.abs(u).mean()
    target = map_coordinates(img, np.indices((n, n, n)) + u, order=1, mode="constant").astype(np.float32)
    momentum = np.stack(np.gradient(gaussian_filter(img + 0.5 * target, 3.0))).astype(np.float32)
    return img, target, momentum


def write_pairs(folder, n_pairs, seed=0):
    rng = np.random.default_rng(seed)
    files = []
    for p in range(n_pairs):
        moving, target, momentum = make_pair(rng)
        files.append(write_pair_patches(moving, target, momentum, folder / f"pair{p}.npy")[0])
    return files


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """3 pairs of 24^3, 8 patches each."""
    return write_pairs(tmp_path_factory.mktemp("patches"), 3)


# tiny settings for the resume tests: 2 training pairs, 16 patches, 4 batches per epoch
TINY = dict(meta=META, features=4, batch_size=4, lr=1e-3, seed=3, dropout=0.2, val_fraction=0.34, progress=False)


def test_loss_falls(tmp_path):
    files = write_pairs(tmp_path / "patches", 8, seed=1)
    out = tmp_path / "run"
    model_path = train(files, out, meta=META, features=4, epochs=6, batch_size=2, lr=1e-3, seed=0, dropout=0.0,
                       val_fraction=0.25, progress=False)
    loss = pd.read_csv(out / "loss.tsv", sep="\t")
    assert list(loss.columns) == ["epoch", "train_l1", "val_l1", "val_zero_l1", "seconds"]
    assert loss["epoch"].tolist() == list(range(1, 7))
    tr, va = loss["train_l1"].to_numpy(), loss["val_l1"].to_numpy()
    assert tr[-1] < 0.7 * tr[0], tr  # typically 0.4
    assert va[-1] < 0.7 * va[0], va
    # the zero field's validation L1: mean |m0| over the held-out pairs' patches, below which the net learned
    ds = PatchDataset(files)
    _, val_idx, _ = split_validation(ds, 0.25, 0)
    zero = float(np.abs(ds.batch(val_idx)[1].numpy()).astype(np.float64).mean())
    assert np.allclose(loss["val_zero_l1"], zero, rtol=1e-5) and va[-1] < 0.7 * zero
    assert (out / "loss.png").stat().st_size > 1000
    model, meta = load_model(model_path, expect={**{k: META[k] for k in ("alpha", "beta", "gamma")},
                                                  "kind": "prediction"})
    assert meta["train_pairs"] == 6 and meta["train_patches"] == 48 and meta["patch"] == 15
    assert meta["momentum_scale"] > 0 and meta["features"] == 4
    # the model predicts in momentum units after dividing by the stored scale
    x = torch.from_numpy(np.load(files[0])[:2, :2].copy())
    with torch.no_grad():
        assert model(x).shape == (2, 3, 15, 15, 15)


def _weights(path):
    return load_file(str(path))


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(small_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    with_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = train(small_set, out, epochs=3, **TINY)
    finally:
        torch.set_num_threads(with_threads)
    return out, path


def test_resume_after_finished_epochs_is_exact(small_set, uninterrupted, tmp_path):
    full_dir, full_model = uninterrupted
    out = tmp_path / "run"
    train(small_set, out, epochs=1, **TINY)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert len(pd.read_csv(out / "loss.tsv", sep="\t")) == 1
    seen = []
    path = train(small_set, out, epochs=3, on_batch=lambda e, b: seen.append(e), **TINY)
    assert set(seen) == {2, 3}  # epoch 1 was not redone
    assert _same_weights(path, full_model)
    a = pd.read_csv(out / "loss.tsv", sep="\t")
    b = pd.read_csv(full_dir / "loss.tsv", sep="\t")
    assert np.array_equal(a[["epoch", "train_l1", "val_l1"]].to_numpy(), b[["epoch", "train_l1", "val_l1"]].to_numpy())
    # a finished run called again only rewrites the model
    assert _same_weights(train(small_set, out, epochs=3, **TINY), full_model)
    # resume=False starts over and gives the same result from scratch
    assert _same_weights(train(small_set, out, epochs=3, **{**TINY, "resume": False}), full_model)


def test_resume_after_sigkill_mid_epoch_is_exact(small_set, uninterrupted, tmp_path):
    _, full_model = uninterrupted
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import json, os, signal, sys, torch
        from qs.train import train
        torch.set_num_threads(1)
        args = json.loads(sys.argv[1])
        def hook(epoch, batch):
            if epoch == 2 and batch == 1:
                os.kill(os.getpid(), signal.SIGKILL)
        train(args["files"], args["out"], epochs=3, on_batch=hook, **args["tiny"])
    """)
    args = json.dumps({"files": [str(f) for f in small_set], "out": str(out), "tiny": TINY})
    proc = subprocess.run([sys.executable, "-c", script, args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not (out / "model.safetensors").exists()
    assert not list(out.glob("*.tmp*"))
    path = train(small_set, out, epochs=3, **TINY)
    assert _same_weights(path, full_model)


def test_resume_refuses_other_settings(small_set, uninterrupted, tmp_path):
    full_dir, _ = uninterrupted
    out = tmp_path / "run"
    train(small_set, out, epochs=1, **TINY)
    with pytest.raises(QsInputError, match="other data or settings"):
        train(small_set, out, epochs=2, **{**TINY, "lr": 2e-3})
    with pytest.raises(QsInputError, match="more than"):
        train(small_set, full_dir, epochs=2, **TINY)


def test_resume_is_logged_and_other_data_is_never_continued(small_set, uninterrupted, tmp_path):
    _, full_model = uninterrupted
    out, said = tmp_path / "run", []
    train(small_set, out, epochs=1, log=said.append, **TINY)
    assert len(said) == 1 and "from scratch" in said[0]
    train(small_set, out, epochs=3, log=said.append, **TINY)
    assert f"resuming from checkpoint {out / 'checkpoint.pt'} at epoch 1 of 3" in said[1]
    # an upstream rerun (other LDDMM momenta): same file names and patch counts, other content
    rng = np.random.default_rng(0)  # small_set's images, its momentum components permuted
    other = [write_pair_patches(*(lambda m, t, p: (m, t, p[[1, 2, 0]]))(*make_pair(rng)), tmp_path / "other" / f"pair{p}.npy")[0]
             for p in range(3)]
    with pytest.raises(QsInputError, match=r"other data or settings \(differs in: patch files\)"):
        train(other, out, epochs=3, **TINY)
    said.clear()
    path = train(other, out, epochs=3, resume="auto", log=said.append, **TINY)  # the qs train default
    assert "not resuming" in said[0] and "starting over" in said[0] and "from scratch" in said[1]
    fresh = train(other, tmp_path / "fresh", epochs=3, **TINY)
    assert _same_weights(path, fresh) and not _same_weights(path, full_model)
    # a finished checkpoint with more epochs than asked: auto starts over too
    said.clear()
    path = train(other, out, epochs=2, resume="auto", log=said.append, **TINY)
    assert "more than the 2 asked" in said[0] and load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_lowpass_loss_keeps_smooth_errors_and_drops_checkerboards():
    """The lowpass loss sees what the kernel K keeps: a constant or smooth error fully, a voxel checkerboard hardly."""
    p = 15
    constant = torch.ones(2, 3, p, p, p)
    assert torch.allclose(lowpass(constant), constant, atol=1e-5)  # normalised at the patch border too
    i = torch.arange(p)
    checker = ((i[:, None, None] + i[None, :, None] + i[None, None, :]) % 2 * 2 - 1).float().expand(1, 3, p, p, p)
    zero = torch.zeros_like(checker)
    assert momentum_loss(checker, zero, "l2").item() == pytest.approx(1.0)
    assert momentum_loss(checker, zero, "l1").item() == pytest.approx(1.0)
    assert momentum_loss(checker, zero, "lowpass").item() < 1e-3
    smooth = torch.sin(i / p * 3.0).float().expand(1, 3, p, p, p)
    assert momentum_loss(smooth, zero, "lowpass").item() > 0.5 * momentum_loss(smooth, zero, "l2").item()
    with pytest.raises(ValueError, match="loss must be one of"):
        momentum_loss(smooth, zero, "huber")


@pytest.mark.parametrize("loss", ["l2", "lowpass"])
def test_other_losses_train_and_are_recorded(small_set, tmp_path, loss):
    path = train(small_set, tmp_path, epochs=2, loss=loss, **TINY)
    _, meta = load_model(path)
    assert meta["loss"] == loss
    history = pd.read_csv(tmp_path / "loss.tsv", sep="\t")
    assert np.isfinite(history["train_l1"]).all() and np.isfinite(history["val_l1"]).all()


def test_init_starts_from_a_models_weights(small_set, uninterrupted, tmp_path):
    """--init: the training starts from the given model's weights (lr ~ 0: it ends there), is tied to them in
    the checkpoint (another init starts over), and a model of another architecture or width is refused."""
    _, start = uninterrupted
    still = dict(TINY, lr=1e-12)
    path = train(small_set, tmp_path / "warm", epochs=1, init=start, **still)
    warm, init = _weights(path), _weights(start)
    assert all(torch.allclose(warm[k], init[k], atol=1e-9) for k in init)
    cold = _weights(train(small_set, tmp_path / "cold", epochs=1, **still))
    assert not all(torch.allclose(cold[k], init[k], atol=1e-3) for k in init)
    # the checkpoint records the init: continuing without it is another setting
    messages = []
    train(small_set, tmp_path / "warm", epochs=2, resume="auto", log=messages.append, **still)
    assert "differs in: init" in messages[0] and "from scratch" in messages[1]
    with pytest.raises(QsInputError, match="model.safetensors: --init model is a quicksilver-2017 network with 4 "
                                           "features; this training builds a dilated-cnn network"):
        train(small_set, tmp_path / "other", epochs=1, init=start, architecture="dilated", **TINY)


def test_train_checks_inputs(small_set, tmp_path):
    with pytest.raises(ValueError, match="loss must be one of"):
        train(small_set, tmp_path, epochs=1, loss="huber", **TINY)
    with pytest.raises(ValueError, match="alpha"):
        train(small_set, tmp_path, **{**TINY, "meta": {"beta": 0.01}}, epochs=1)
    with pytest.raises(QsInputError, match="does not exist"):
        train([tmp_path / "missing.npy"], tmp_path, epochs=1, **TINY)


def test_checkpoint_loader_is_weights_only(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    torch.save({"format": "qs-checkpoint-1", "x": Evil()}, tmp_path / "checkpoint.pt")
    with pytest.raises(QsInputError, match="cannot read training checkpoint"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not marker.exists()
