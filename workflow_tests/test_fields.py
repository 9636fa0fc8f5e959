"""The field the networks learn (qs.fields): momentum m0, velocity v0 = K m0 or the deformation, from patches to
prediction."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

import qs.cli
from qs.fields import FIELDS, VELOCITY_CUTOFF_MM, field_of, lowpass_velocity, to_field, to_momentum
from qs.io import QsInputError
from qs.model_io import load_model
from qs.patches import PatchDataset, write_pair_patches
from qs.predict.window import predict_momentum, prediction_starts

SPACING = (2.0, 2.0, 2.0)
KERNEL = dict(alpha=0.08, beta=0.08, gamma=0.001, time_steps=5)
SHAPE = (20, 24, 18)


def _momentum(seed=0):
    """A rough momentum: white noise inside a box, zero around it (like an LDDMM momentum near a brain)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros((3, *SHAPE))
    m[:, 4:16, 5:19, 3:15] = torch.randn((3, 12, 14, 12), generator=g) * 1e-5
    return m


def _images(seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros(SHAPE, np.float32)
    a[3:17, 4:20, 3:15] = 0.5 + 0.3 * rng.random((14, 16, 12))
    return a, np.roll(a, 1, axis=0)


def test_velocity_round_trip_and_smoothness():
    m = _momentum()
    v = to_field(m, "velocity", SPACING, KERNEL)
    assert v.shape == m.shape and v.dtype == m.dtype
    back = to_momentum(v, "velocity", SPACING, KERNEL, cutoff_mm=None)
    assert torch.allclose(back, m, atol=1e-3 * float(m.abs().max()))
    # K is positive definite and smooths: <m, K m> > 0, and v varies far less from voxel to voxel than m
    assert float((m * v).sum()) > 0
    rough = lambda f: float((f[:, 1:] - f[:, :-1]).abs().mean() / f.abs().mean())  # noqa: E731
    assert rough(v) < 0.2 * rough(m)
    # the velocity spreads beyond the momentum's support (the kernel is ~9 mm wide at alpha = 0.08 mm^2)
    assert float(v[:, 0].abs().max()) > 0
    # momentum is the identity
    assert to_field(m, "momentum", SPACING, KERNEL) is m and to_momentum(m, "momentum", SPACING, KERNEL) is m


def test_predicted_velocity_is_lowpassed_before_shooting():
    """A rough velocity (smooth part + voxel noise, as a network predicts) shoots to NaN as is; low-passed it
    shoots to a diffeomorphism, while a kernel-smooth velocity passes the filter almost unchanged."""
    from qs.fields import model_shooter
    from qs.lddmm import jacobian_determinant

    smooth = to_field(_momentum(), "velocity", SPACING, KERNEL)
    smooth = smooth * (2.0 / smooth.abs().max())  # mm
    noise = torch.zeros_like(smooth)
    noise[:, 4:16, 5:19, 3:15] = torch.randn((3, 12, 14, 12), generator=torch.Generator().manual_seed(1))
    assert float((lowpass_velocity(smooth, SPACING, KERNEL, VELOCITY_CUTOFF_MM) - smooth).norm()) < 0.03 * float(
        smooth.norm())
    assert float(lowpass_velocity(noise, SPACING, KERNEL, VELOCITY_CUTOFF_MM).norm()) < 0.2 * float(noise.norm())
    shooter = model_shooter(dict(KERNEL, power=2, pad=0), SHAPE, SPACING)
    raw = shooter.shoot(to_momentum(smooth + noise, "velocity", SPACING, KERNEL, cutoff_mm=None)).u1
    assert not torch.isfinite(raw).all()
    u = shooter.shoot(to_momentum(smooth + noise, "velocity", SPACING, KERNEL)).u1  # the model's cutoff: the default
    assert torch.isfinite(u).all() and float(jacobian_determinant(u, SPACING).min()) > 0
    # a model may record its own cutoff; a longer one smooths more
    longer = to_momentum(noise, "velocity", SPACING, KERNEL | {"velocity_cutoff_mm": 24.0})
    assert float(longer.norm()) < float(to_momentum(noise, "velocity", SPACING, KERNEL).norm())
    with pytest.raises(ValueError, match="cutoff_mm must be positive"):
        lowpass_velocity(noise, SPACING, KERNEL, 0.0)


def test_unknown_fields_are_refused():
    assert FIELDS == ("momentum", "velocity", "deformation")
    assert field_of({}) == "momentum" and field_of({"field": "velocity"}) == "velocity"
    with pytest.raises(ValueError, match="field must be one of"):
        field_of({"field": "displacement"})
    with pytest.raises(ValueError, match=r"must be \(3, I, J, K\)"):
        to_field(torch.zeros((2, *SHAPE)), "velocity", SPACING, KERNEL)


def test_velocity_patches_train_a_velocity_model(tmp_path):
    from qs.train import train

    a, b = _images()
    m = _momentum()
    v = to_field(m, "velocity", SPACING, KERNEL)
    f1, side = write_pair_patches(a, b, v, tmp_path / "p1.npy", stride=7, field="velocity")
    info = json.loads(side.read_text())
    assert info["field"] == "velocity" and info["channels"] == ["moving", "target", "v0_i", "v0_j", "v0_k"]
    ds = PatchDataset([f1])
    assert ds.field == "velocity"
    # the patches hold the velocity itself
    i, j, k = info["starts"][0]
    assert np.allclose(np.load(f1)[0, 2:], v[:, i:i + 15, j:j + 15, k:k + 15].numpy())
    # a momentum patch file beside it is refused
    f2, _ = write_pair_patches(a, b, m, tmp_path / "p2.npy", stride=7)
    with pytest.raises(QsInputError, match="holds the momentum but p1.npy the velocity"):
        PatchDataset([f1, f2])
    # a sidecar naming an unknown field is refused, naming the sidecar
    bad = json.loads(side.read_text())
    f3, side3 = write_pair_patches(a, b, v, tmp_path / "p3.npy", stride=7, field="velocity")
    side3.write_text(json.dumps({**bad, "field": "displacement"}))
    with pytest.raises(QsInputError, match=r"p3\.json: field must be one of"):
        PatchDataset([f3])
    meta = dict(KERNEL, sigma=0.2, spacing=list(SPACING), modality="T1->T1")
    model_path = train([f1], tmp_path / "model", meta=meta, features=2, epochs=1, batch_size=4, val_fraction=0.0,
                       progress=False, log=None)
    _, saved = load_model(model_path)
    assert saved["field"] == "velocity"
    # the velocity's scale, not the momentum's (|v| ~ 1e-2 mm here, |m| ~ 1e-5)
    assert saved["momentum_scale"] == pytest.approx(1.0 / float(np.abs(np.load(f1)[:, 2:]).mean()), rel=1e-4)


class _Constant(nn.Module):
    """A stand-in network that outputs the same field for every patch: (c_i, c_j, c_k) everywhere."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.tensor(c, dtype=torch.float32).view(1, 3, 1, 1, 1)

    def forward(self, x):
        return self.c.expand(x.shape[0], 3, *x.shape[2:]).clone()


def _constant_field_pair(meta, c):
    """A pair on a longer grid whose last slices lie in background patches (not predicted), and what a
    :class:`_Constant` network ``c`` assembles on it: ``(a, b, covered, assembled)``, ``assembled`` = ``c /
    momentum_scale`` on the covered voxels, 0 elsewhere."""
    a = np.zeros((40, *SHAPE[1:]), np.float32)
    a[:16] = _images()[0][:16]
    b = np.roll(a, 1, axis=0)
    covered = np.zeros(a.shape, bool)
    for i, j, k in prediction_starts(meta, a, b):
        covered[i:i + 15, j:j + 15, k:k + 15] = True
    assert covered.sum() < covered.size
    assembled = torch.zeros((3, *a.shape))
    for comp in range(3):
        assembled[comp][torch.from_numpy(covered)] = c[comp] / meta["momentum_scale"]
    return a, b, covered, assembled


def test_a_predicted_velocity_is_turned_into_its_momentum():
    meta = dict(KERNEL, spacing=list(SPACING), patch=15, stride=7, momentum_scale=2.0, background_threshold=0.0,
                field="velocity")
    c = (0.4, -0.2, 0.6)  # scaled velocity: v0 = c / 2 on every covered voxel
    a, b, covered, assembled = _constant_field_pair(meta, c)
    m = predict_momentum(_Constant(c), meta, a, b)
    v = to_field(m, "velocity", SPACING, meta)  # shooting m starts from this velocity
    # the assembled velocity (c / 2 on the covered voxels, 0 elsewhere), low-passed (the model's default cutoff)
    assert torch.allclose(v, lowpass_velocity(assembled, SPACING, meta, VELOCITY_CUTOFF_MM), atol=1e-5)
    assert float((v - assembled).abs().max()) > 0.01  # the seam at the uncovered slices is smoothed
    # the same network read as a momentum model gives the scaled output itself
    m_plain = predict_momentum(_Constant(c), {**meta, "field": "momentum"}, a, b)
    assert torch.allclose(m_plain[:, covered], torch.tensor(c).view(3, 1) / 2)


def test_qs_patches_field_velocity(tmp_path):
    a, b = _images()
    m = _momentum()
    affine = np.diag([*SPACING, 1.0])
    paths = {}
    for name, data in (("mov", a), ("tgt", b), ("m0", np.moveaxis(m.numpy(), 0, -1))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(paths[name]))
    out = tmp_path / "v.npy"
    rc = qs.cli.main(["patches", "--moving", str(paths["mov"]), "--target", str(paths["tgt"]), "--momentum",
                      str(paths["m0"]), "--stride", "7", "--field", "velocity", "--alpha", "0.08", "--beta", "0.08",
                      "--gamma", "0.001", "--out", str(out)])
    assert rc == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["field"] == "velocity"
    v = to_field(m, "velocity", SPACING, KERNEL)
    i, j, k = info["starts"][-1]
    assert np.allclose(np.load(out)[-1, 2:], v[:, i:i + 15, j:j + 15, k:k + 15].numpy(), atol=1e-7)


def test_the_deformation_of_a_momentum_is_its_shot_displacement():
    from qs.fields import model_shooter

    m = _momentum() * 10
    u = to_field(m, "deformation", SPACING, KERNEL)
    expected = model_shooter(KERNEL, SHAPE, SPACING).shoot(m).u1
    assert u.shape == m.shape and torch.allclose(u, expected)
    assert 0.05 < float(u.abs().max()) < 5  # mm: a real, moderate deformation
    with pytest.raises(ValueError, match="a predicted deformation has no momentum"):
        to_momentum(u, "deformation", SPACING, KERNEL)


def test_a_predicted_deformation_is_used_as_it_is_and_may_fold():
    """The paper's deformation variant: the network's displacement is the transform (no shooting, no filter),
    so nothing keeps det J > 0: a displacement that drops by 8 mm across two 2 mm voxels folds."""
    from qs.predict.refine import Refinement
    from qs.predict.registration import predict_registration

    meta = dict(KERNEL, spacing=list(SPACING), patch=15, stride=7, momentum_scale=2.0, background_threshold=0.0,
                field="deformation", kind="prediction")
    c = (16.0, -0.2, 0.6)  # scaled displacement: u = c / 2 mm on every covered voxel
    a, b, _, assembled = _constant_field_pair(meta, c)
    res = predict_registration(_Constant(c), meta, a, b, progress=False)
    assert torch.equal(res.phiinv, assembled) and torch.equal(res.m_pred, assembled)
    assert res.m0 is None and res.summary["field"] == "deformation" and res.summary["padded_shape"] is None
    assert res.summary["detj_min"] < 0 < res.summary["detj_max"]  # folds where the 8 mm displacement ends
    with pytest.raises(QsInputError, match="has no correction network"):
        predict_registration(_Constant(c), meta, a, b, correction=(_Constant(c), meta), progress=False)
    with pytest.raises(QsInputError, match="predicts no momentum to refine"):
        predict_registration(_Constant(c), meta, a, b, refinement=Refinement(2), progress=False)


def test_qs_patches_field_deformation(tmp_path):
    a, b = _images()
    m = _momentum() * 10
    affine = np.diag([*SPACING, 1.0])
    paths = {}
    for name, data in (("mov", a), ("tgt", b), ("m0", np.moveaxis(m.numpy(), 0, -1))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(paths[name]))
    out = tmp_path / "u.npy"
    rc = qs.cli.main(["patches", "--moving", str(paths["mov"]), "--target", str(paths["tgt"]), "--momentum",
                      str(paths["m0"]), "--stride", "7", "--field", "deformation", "--alpha", "0.08", "--beta",
                      "0.08", "--gamma", "0.001", "--time-steps", "5", "--out", str(out)])
    assert rc == 0
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["field"] == "deformation" and info["channels"] == ["moving", "target", "u_i", "u_j", "u_k"]
    u = to_field(m, "deformation", SPACING, KERNEL)
    i, j, k = info["starts"][-1]
    assert np.allclose(np.load(out)[-1, 2:], u[:, i:i + 15, j:j + 15, k:k + 15].numpy(), atol=1e-6)
