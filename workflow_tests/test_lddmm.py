"""LDDMM engine: kernel, EPDiff shooting, adjoint gradient, optimizer, file outputs, ANTs warps.

Small grids (<= 32^3) and eager execution keep the whole file to well under a minute.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from qs.device import resolve_device
from qs.io import QsInputError
from qs.lddmm import (FluidKernel, Objective, Shooter, energy_autograd, identity, jacobian_determinant,
                      lddmm_registration, warp_image, warp_labels)
from qs.lddmm.gradient import local_ncc
from qs.lddmm.multiscale import coarse_spacing, coarsen_image, refine_momentum
from qs.lddmm_run import run_lddmm
from qs.transforms import itk_geometry, read_ants_displacement, write_ants_displacement

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small grids gain nothing from threads, and a busy shared machine makes them spin: use one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def phantom(shape, seed=0) -> np.ndarray:
    """A brain-like test image in [0, 1]: ellipsoid, two inclusions, smooth texture, zero border."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    r = np.sqrt(((g / np.array([0.75, 0.65, 0.7])[:, None, None, None]) ** 2).sum(0))
    img = (r < 1) * 0.6
    img = img + (np.sqrt(((g - np.array([0.25, -0.1, 0.1])[:, None, None, None]) ** 2).sum(0)) < 0.3) * 0.4
    img = img - (np.sqrt(((g - np.array([-0.3, 0.2, -0.2])[:, None, None, None]) ** 2).sum(0)) < 0.25) * 0.3
    img = img + ndimage.gaussian_filter(rng.standard_normal(shape), 2) * 0.3 * (r < 1)
    img = ndimage.gaussian_filter(img, 0.8)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def smooth_momentum(obj: Objective, amplitude_mm: float, seed=1, mask=None) -> torch.Tensor:
    """A smooth random momentum on ``obj``'s image grid whose velocity peaks at ``amplitude_mm``."""
    rng = np.random.default_rng(seed)
    g = ndimage.gaussian_filter(rng.standard_normal((3, *obj.shape)), (0, 3, 3, 3))
    if mask is not None:
        g = g * ndimage.gaussian_filter(mask.astype(float), 3)
    m = torch.as_tensor(g, dtype=obj.dtype)
    return m * (amplitude_mm / obj.velocity(m).abs().max())


def write(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


# ---------------------------------------------------------------------------
# kernel
# ---------------------------------------------------------------------------


def _fd_operator(v, h, a, b, g):
    """``L v = -a Lap v - b grad div v + g v`` by periodic finite differences (PyCA's discretisation)."""
    d2 = lambda f, ax: (torch.roll(f, -1, ax) - 2 * f + torch.roll(f, 1, ax)) / h[ax] ** 2  # noqa: E731
    d1 = lambda f, ax: (torch.roll(f, -1, ax) - torch.roll(f, 1, ax)) / (2 * h[ax])  # noqa: E731
    out = torch.empty_like(v)
    for i in range(3):
        lap = sum(d2(v[i], j) for j in range(3))
        graddiv = d2(v[i], i) + sum(d1(d1(v[j], j), i) for j in range(3) if j != i)
        out[i] = -a * lap - b * graddiv + g * v[i]
    return out


def test_kernel_is_inverse_of_squared_operator_with_anisotropic_spacing():
    shape, h, (a, b, g) = (6, 5, 8), (1.0, 1.5, 2.0), (0.3, 0.2, 0.05)
    K = FluidKernel(shape, h, alpha=a, beta=b, gamma=g, dtype=torch.float64)
    v = torch.randn(3, *shape, dtype=torch.float64)
    torch.testing.assert_close(K.apply_operator(v), _fd_operator(_fd_operator(v, h, a, b, g), h, a, b, g))
    torch.testing.assert_close(_fd_operator(_fd_operator(K.apply(v), h, a, b, g), h, a, b, g), v)
    w = torch.randn_like(v)  # self-adjoint
    assert abs(float((K.apply(v) * w).sum() - (v * K.apply(w)).sum())) < 1e-9


def test_kernel_is_the_same_physical_smoother_at_1_2_3_mm():
    """Spacing enters in mm: the impulse response has about the same width in mm at every spacing."""
    widths = []
    for h in (1.0, 2.0, 3.0):
        n = int(72 / h)
        K = FluidKernel((n, n, n), (h, h, h), dtype=torch.float64)
        m = torch.zeros(3, n, n, n, dtype=torch.float64)
        m[0, n // 2, n // 2, n // 2] = 1.0
        prof = K.apply(m)[0, n // 2:, n // 2, n // 2]
        prof = (prof / prof[0]).numpy()
        widths.append(np.interp(0.5, prof[::-1], (np.arange(len(prof)) * h)[::-1]))
    assert all(2.5 < w < 4.5 for w in widths), widths  # about sqrt(alpha / gamma) = 3.2 mm
    assert max(widths) / min(widths) < 1.4, widths


def test_a_multi_scale_kernel_is_the_mean_of_its_widths():
    """kernel_scales: K is the mean of the kernels of alpha, beta times scale^2; its operator is K's inverse; the
    same gain for a constant field, a narrower impulse response than its widest kernel."""
    shape, h = (12, 10, 14), (2.0, 2.0, 2.0)
    kw = dict(alpha=0.08, beta=0.04, gamma=0.001, dtype=torch.float64)
    multi = FluidKernel(shape, h, scales=(1.0, 0.5), **kw)
    wide = FluidKernel(shape, h, **kw)
    narrow = FluidKernel(shape, h, **{**kw, "alpha": 0.02, "beta": 0.01})
    v = torch.randn(3, *shape, dtype=torch.float64)
    torch.testing.assert_close(multi.apply(v), (wide.apply(v) + narrow.apply(v)) / 2)
    torch.testing.assert_close(multi.apply_operator(multi.apply(v)), v)
    ones = torch.ones(3, *shape, dtype=torch.float64)
    torch.testing.assert_close(multi.apply(ones), wide.apply(ones))
    impulse = torch.zeros(3, *shape, dtype=torch.float64)
    impulse[0, 6, 5, 7] = 1.0
    peak = lambda k: k.apply(impulse)[0, 6, 5, 7] / k.apply(impulse)[0, 6:, 5, 7].sum()  # noqa: E731
    assert peak(narrow) > peak(multi) > peak(wide)
    assert multi.params["scales"] == [1.0, 0.5]
    with pytest.raises(ValueError, match="scales"):
        FluidKernel(shape, h, scales=(1.0, 0.0))


# ---------------------------------------------------------------------------
# shooting
# ---------------------------------------------------------------------------


def test_zero_momentum_gives_identity():
    obj = Objective(np.zeros((10, 12, 8)), np.zeros((10, 12, 8)), (2.0, 2.0, 2.0), compile=False)
    geo = obj.shooter.shoot(obj.pad(obj.zeros()), forward_map=True, velocities=True)
    for t in (geo.m1, geo.u1, geo.w1, geo.v0, *geo.velocities):
        assert float(t.abs().max()) == 0.0
    assert len(geo.velocities) == 11


@pytest.fixture(scope="module")
def shot():
    """A moderate geodesic on a 24^3, 2 mm grid (velocity up to 4 mm, about 2 voxels)."""
    img = phantom((24, 24, 24))
    obj = Objective(img, img, (2.0, 2.0, 2.0), compile=False, dtype=torch.float64)
    m0 = smooth_momentum(obj, 4.0, mask=img > 0.05)
    geo = obj.shooter.shoot(obj.pad(m0), forward_map=True)
    return obj, m0, obj.crop(geo.u1), obj.crop(geo.w1)


def test_inverse_consistency(shot):
    """phi_1(phi_1^{-1}(x)) = x within 0.1 mm (0.05 voxel) inside the grid, 0.02 mm on average.

    Checked with cubic interpolation (trilinear would add its own ~0.1 mm);
    a 3-voxel rim, where x + u(x) leaves the grid, is left out. Measured:
    max 0.066 mm, mean 0.007 mm for displacements up to 3.8 mm at 2 mm voxels.
    """
    obj, _, u, w = shot
    assert float(u.abs().max()) > 2.0  # a real deformation
    pos = (identity(obj.shape, obj.spacing, dtype=u.dtype) + u).numpy() / np.array(obj.spacing)[:, None, None, None]
    w_at = np.stack([ndimage.map_coordinates(w[c].numpy(), pos, order=3, mode="nearest") for c in range(3)])
    err = np.linalg.norm(u.numpy() + w_at, axis=0)[3:-3, 3:-3, 3:-3]
    assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())


def test_jacobian_positive_for_moderate_momenta(shot):
    obj, m0, u, w = shot
    for disp in (u, w):
        dj = jacobian_determinant(disp, obj.spacing)
        assert float(dj.min()) > 0.2 and float(dj.max()) < 5.0
    # three times stronger: still a diffeomorphism
    geo = obj.shooter.shoot(obj.pad(3.0 * m0))
    assert float(jacobian_determinant(obj.crop(geo.u1), obj.spacing).min()) > 0.0


def test_anisotropic_spacing_is_honoured():
    """The same continuous momentum shot on a 1x1x1 mm and on a 1x1x2 mm grid gives the same map."""
    n = 32
    x = np.meshgrid(*[np.arange(n) * 1.0] * 3, indexing="ij")
    k = 2 * np.pi / n

    def field(X):  # smooth, periodic over the 32 mm box
        return np.stack([np.sin(k * X[1]) * np.cos(k * X[2]), np.cos(k * X[0]) * np.sin(k * X[2]),
                         np.sin(k * X[0] + k * X[1])]) * 4e-6

    iso = Objective(np.zeros((n, n, n)), np.zeros((n, n, n)), (1.0, 1.0, 1.0), compile=False, dtype=torch.float64)
    ani = Objective(np.zeros((n, n, n // 2)), np.zeros((n, n, n // 2)), (1.0, 1.0, 2.0), compile=False,
                    dtype=torch.float64)
    u_iso = iso.crop(iso.shooter.shoot(torch.as_tensor(field(x), dtype=torch.float64)).u1)
    xa = [c[:, :, ::2] for c in x]
    u_ani = ani.crop(ani.shooter.shoot(torch.as_tensor(field(xa), dtype=torch.float64)).u1)
    ref = u_iso[:, :, :, ::2]
    assert float(ref.abs().max()) > 1.0  # mm
    assert float((u_ani - ref).abs().max()) < 0.05 * float(ref.abs().max())


# ---------------------------------------------------------------------------
# gradient and optimisation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("store_velocities,slabs", [(False, None), (True, None), (False, 4)])
def test_adjoint_gradient_matches_autograd_through_the_trajectory(store_velocities, slabs):
    """Checkpointed adjoint vs autograd through all RK4 stages (float64, anisotropic, padded grid),
    with and without stored stage velocities and slab-wise stage evaluation."""
    shape, h = (12, 10, 9), (1.5, 2.0, 1.2)
    I0, I1 = phantom(shape, 0), phantom(shape, 3)
    obj = Objective(I0, I1, h, time_steps=5, pad=3, compile=False, store_velocities=store_velocities,
                    dtype=torch.float64)
    obj.shooter = Shooter(obj.kernel, time_steps=5, compile=False, store_velocities=store_velocities, slabs=slabs)
    assert obj.shooter.store_velocities == store_velocities and obj.shooter.slab == slabs
    assert obj.padded != obj.shape
    m0 = smooth_momentum(obj, 2.5, seed=4)
    energy, g = obj(m0)
    x = m0.clone().requires_grad_(True)
    total, match, reg = energy_autograd(obj, x)
    (ga,) = torch.autograd.grad(total, x)
    total, reg = total.detach(), reg.detach()
    assert abs(float(total) - energy.total) < 1e-12 * max(1.0, abs(energy.total))
    assert abs(float(reg) - energy.regularity) < 1e-12 and energy.regularity > 0
    rel = float((g - ga).norm() / ga.norm())
    assert rel < 1e-3, rel


@pytest.fixture(scope="module")
def recovery():
    """Register a phantom to itself warped by a known shot momentum (24^3, 2 mm)."""
    shape, h = (24, 24, 24), (2.0, 2.0, 2.0)
    I0 = torch.from_numpy(phantom(shape))
    obj = Objective(I0, I0, h, compile=False)
    m_true = smooth_momentum(obj, 2.5, mask=I0.numpy() > 0.05)
    u_true = obj.crop(obj.shooter.shoot(obj.pad(m_true)).u1)
    I1 = warp_image(I0, u_true, h)
    res = lddmm_registration(I0, I1, h, iterations=30, progress=False, compile=False)
    return I0, I1, u_true, res


def test_energy_decreases(recovery):
    _, _, _, res = recovery
    energies = [r["energy"] for r in res.history]
    assert all(b <= a for a, b in zip(energies, energies[1:]))
    assert energies[-1] < 0.05 * energies[0]
    assert res.summary["regularity"] > 0 and res.summary["accepted_steps"] > 15


@pytest.mark.parametrize("method", ["gd", "gd-V"])
def test_lbfgs_beats_gradient_descent_at_equal_shootings(recovery, method):
    """Same pair, same number of energy evaluations: L-BFGS ends lower, and every rule is monotone."""
    I0, I1, _, res = recovery
    other = lddmm_registration(I0, I1, (2.0, 2.0, 2.0), iterations=30, method=method, progress=False, compile=False)
    energies = [r["energy"] for r in other.history]
    assert all(b <= a for a, b in zip(energies, energies[1:]))
    assert res.summary["optimizer"] == "lbfgs" and other.summary["optimizer"] == method
    assert res.summary["energy"] < 0.7 * other.summary["energy"], (res.summary["energy"], other.summary["energy"])


def test_optimize_rejects_unknown_method(recovery):
    I0, I1, _, _ = recovery
    with pytest.raises(ValueError, match="method must be one of lbfgs, gd, gd-V"):
        lddmm_registration(I0, I1, (2.0, 2.0, 2.0), iterations=1, method="adam", progress=False, compile=False)


def test_local_ncc_ignores_local_intensity_maps():
    """LNCC of a textured image with itself is 1, kept under a linear intensity map, nearly kept under a
    smooth bias field, and small against independent noise; the window must be odd."""
    texture = ndimage.gaussian_filter(np.random.default_rng(3).standard_normal((20, 22, 18)), 1.0)
    a = torch.from_numpy(phantom((20, 22, 18)) + 0.5 * texture)  # no flat window
    x = torch.linspace(-1, 1, 20, dtype=torch.float64)[:, None, None]
    bias = torch.exp(0.15 * x).expand_as(a)
    same = float(local_ncc(a, a, eps=1e-12))
    assert same > 0.999
    assert abs(float(local_ncc(a, 3.0 * a + 1.0, eps=1e-12)) - same) < 1e-6
    assert float(local_ncc(a, a * bias, eps=1e-12)) > 0.95 * same
    noise = torch.rand(a.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(local_ncc(a, noise, eps=1e-12)) < 0.1 * same
    flat = torch.from_numpy(phantom((20, 22, 18))).double()
    assert float(local_ncc(flat, flat)) < 0.8  # empty border and the default eps: flat windows count about 0
    with pytest.raises(ValueError, match="window must be an odd number"):
        local_ncc(a, a, window=4)


def test_lncc_registration_is_robust_to_a_bias_field(recovery):
    """The target is the known deformation of the phantom times a +-25% bias field and a contrast change.
    SSD matches the intensity ramp by deforming (folds, error above the true displacement); LNCC ignores it:
    no fold and a smaller error. Measured (30 iterations): SSD mean error 2.9 mm with det J min -0.9,
    LNCC 1.5 mm with det J min 0.37, for a true displacement of mean 1.3 mm. (On this nearly flat phantom
    LNCC recovers less than SSD does without bias, 1.1 vs 0.2 mm: its ``eps`` rewards contrast where the
    target is flat; on the demo brains it raises the label overlap, see docs/performance.md.)"""
    I0, I1, u_true, _ = recovery
    h = (2.0, 2.0, 2.0)
    x = torch.linspace(-1, 1, I1.shape[0])[:, None, None]
    biased = I1 * torch.exp(0.25 * x).expand_as(I1) * 0.7
    mask = torch.from_numpy(ndimage.binary_dilation(I0.numpy() > 0.05, iterations=2))
    err, detj = {}, {}
    for sim in ("lncc", "ssd"):
        res = lddmm_registration(I0, biased, h, iterations=30, similarity=sim, progress=False, compile=False)
        err[sim] = float((res.phiinv - u_true).norm(dim=0)[mask].mean())
        detj[sim] = res.summary["detj_min"]
        assert res.summary["similarity"] == sim
        energies = [r["energy"] for r in res.history]
        assert all(b <= a for a, b in zip(energies, energies[1:])) and energies[-1] < energies[0]
    assert detj["lncc"] > 0 and err["lncc"] < 0.7 * err["ssd"], (err, detj)
    with pytest.raises(ValueError, match="similarity must be one of ssd, lncc"):
        lddmm_registration(I0, I1, h, iterations=1, similarity="mi", progress=False, compile=False)
    with pytest.raises(ValueError, match="window must be an odd number"):
        lddmm_registration(I0, I1, h, iterations=1, similarity="lncc", window=4, progress=False, compile=False)


def test_cli_refuses_an_even_window(capsys):
    """``qs lddmm --window 4`` stops at the argument parser with one line, before any file is read."""
    from qs.cli import main

    with pytest.raises(SystemExit) as info:
        main(["lddmm", "--moving", "m.nii.gz", "--target", "t.nii.gz", "--out", "o", "--window", "4"])
    assert info.value.code == 2
    assert "argument --window: must be an odd integer >= 1, got 4" in capsys.readouterr().err


def test_coarsen_and_refine_keep_a_linear_field():
    """Block means of a ramp sit at the coarse centres; refining them gives the ramp back (interior)."""
    ramp = torch.arange(10.0).reshape(10, 1, 1).expand(10, 7, 6).contiguous()
    coarse = coarsen_image(ramp)
    assert coarse.shape == (5, 4, 3) and torch.allclose(coarse[:, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5, 8.5]))
    fine = refine_momentum(torch.stack([coarse] * 3), (10, 7, 6))
    assert fine.shape == (3, 10, 7, 6)
    assert torch.allclose(fine[:, 1:9], ramp[None, 1:9].expand(3, 8, 7, 6))
    assert coarse_spacing((1.0, 2.0, 3.0)) == (2.0, 4.0, 6.0)
    with pytest.raises(ValueError, match="not the fine grid"):
        refine_momentum(torch.stack([coarse] * 3), (12, 7, 6))


def test_coarse_to_fine_registration(recovery):
    """Coarse-to-fine: rows of both grids in the history, each level monotone, the fine level improves on the
    coarse result. (Whether it pays off is measured on brains, not on this 24^3 phantom, whose 12^3 coarse grid
    keeps little of it: see the LDDMM figures in docs/performance.md.)"""
    I0, I1, u_true, _ = recovery
    h = (2.0, 2.0, 2.0)
    both = lddmm_registration(I0, I1, h, iterations=10, coarse_iterations=20, progress=False, compile=False)
    rows = both.history
    assert len(rows) == 21 + 11 and [r["iteration"] for r in rows] == list(range(32))
    assert [r["spacing_mm"] for r in rows] == [4.0] * 21 + [2.0] * 11
    for level in (rows[:21], rows[21:]):
        energies = [r["energy"] for r in level]
        assert all(b <= a for a, b in zip(energies, energies[1:]))
    assert rows[-1]["energy"] < rows[21]["energy"] < 0.5 * rows[0]["energy"]
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(rows, rows[1:]))
    assert both.summary["coarse_iterations"] == 20 and both.summary["energy_initial"] == rows[0]["energy"]
    assert both.summary["detj_min"] > 0


def test_recovers_a_known_deformation(recovery):
    """Where the image has structure, the recovered phi^{-1} is within about 0.25 voxel of the truth.

    Measured (30 iterations): mean error 0.36 mm, 95th percentile 0.70 mm, max
    0.94 mm at 2 mm voxels, for a true displacement of mean 1.27 mm and max
    3.1 mm; the energy drops 400-fold.
    """
    I0, _, u_true, res = recovery
    mask = torch.from_numpy(ndimage.binary_dilation(I0.numpy() > 0.05, iterations=2))
    err = (res.phiinv - u_true).norm(dim=0)[mask]
    true = u_true.norm(dim=0)[mask]
    assert float(true.max()) > 2.0
    assert float(err.mean()) < 0.5 and float(err.mean()) < 0.5 * float(true.mean()), float(err.mean())
    assert float(torch.quantile(err, 0.95)) < 1.2
    assert res.summary["detj_min"] > 0.5


# ---------------------------------------------------------------------------
# files, ANTs, labels, errors
# ---------------------------------------------------------------------------


def test_run_lddmm_outputs_and_ants_reproduces_warped(tmp_path):
    import ants

    shape = (20, 24, 18)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-20.0, -30.0, -12.0)
    I0, I1 = phantom(shape, 0), phantom(shape, 5)
    lab = np.zeros(shape, np.int32)
    lab[4:10, 5:14, 4:10] = 2035
    lab[10:16, 5:14, 4:10] = 1001
    lab[8:12, 14:20, 8:14] = 2**30 + 7
    mov = write(tmp_path / "moving.nii.gz", I0, affine)
    tgt = write(tmp_path / "target.nii.gz", I1, affine)
    labels = write(tmp_path / "labels.nii.gz", lab, affine)
    out = tmp_path / "out"
    summary = run_lddmm(mov, tgt, out, labels=labels, iterations=4, time_steps=5, progress=False, device="cpu")

    for name in ("m0", "warp", "warped", "warped_labels", "energy", "summary"):
        assert (out / f"{name}.{'tsv' if name == 'energy' else 'json' if name == 'summary' else 'nii.gz'}").exists()
    m0 = nib.load(str(out / "m0.nii.gz"))
    assert m0.shape == (*shape, 3) and np.allclose(m0.affine, affine)
    rows = (out / "energy.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["iteration", "energy", "matching", "regularity", "seconds", "spacing_mm"]
    assert len(rows) == 6 and all(r.endswith("\t2") for r in rows[1:])
    js = json.loads((out / "summary.json").read_text())
    assert js["detj_min"] > 0 and js["iterations"] == 4 and js["device"] == "cpu"
    assert js["detj_min"] == summary["detj_min"] and js["outputs"]["warp"] == summary["outputs"]["warp"]
    for key in ("detj_max", "seconds", "kernel", "sigma", "time_steps"):
        assert key in js

    warped = nib.load(str(out / "warped.nii.gz")).get_fdata()
    assert np.abs(warped - I0).max() > 1e-3  # it moved
    ants_warped = ants.apply_transforms(fixed=ants.image_read(str(tgt)), moving=ants.image_read(str(mov)),
                                        transformlist=[str(out / "warp.nii.gz")]).numpy()
    assert np.abs(ants_warped - warped).max() < 1e-4

    wl = nib.load(str(out / "warped_labels.nii.gz"))
    assert wl.get_data_dtype() == np.int32
    got = np.asarray(wl.dataobj)
    assert set(np.unique(got)) <= {0, 1001, 2035, 2**30 + 7} and (got == 2035).sum() > 100
    ants_lab = ants.apply_transforms(fixed=ants.image_read(str(tgt)), moving=ants.image_read(str(labels)),
                                     transformlist=[str(out / "warp.nii.gz")], interpolator="nearestNeighbor")
    assert (ants_lab.numpy().round().astype(np.int64)[got < 2**24] == got[got < 2**24]).mean() > 0.999


@pytest.mark.parametrize("kind", ["flipped_oblique", "diagonal"])
def test_ants_displacement_convention(tmp_path, kind):
    """Our warp of a known displacement equals ANTs' for flipped, oblique and anisotropic grids."""
    import ants

    rng = np.random.default_rng(0)
    shape, h = (16, 20, 14), np.array([1.5, 2.0, 1.2])
    A = np.eye(4)
    if kind == "diagonal":
        A[:3, :3] = np.diag(h)
    else:
        c, s = np.cos(0.3), np.sin(0.3)
        R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)],
                                                                      [0, np.sin(0.2), np.cos(0.2)]])
        A[:3, :3] = R @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(h)  # x flipped, then rotated
    A[:3, 3] = (12.0, -7.0, 4.0)
    img = phantom(shape)
    disp = ndimage.gaussian_filter(rng.standard_normal((3, *shape)), (0, 3, 3, 3))
    disp = disp / np.abs(disp).max() * 2.0
    ours = warp_image(torch.from_numpy(img), torch.from_numpy(disp).float(), tuple(h), outside_value=0.0).numpy()
    path = write_ants_displacement(disp, A, tmp_path / "warp.nii.gz")
    moving = ants.image_read(str(write(tmp_path / "m.nii.gz", img, A)))
    theirs = ants.apply_transforms(fixed=moving, moving=moving, transformlist=[str(path)]).numpy()
    assert np.abs(theirs - ours).max() < 1e-4
    back, A2 = read_ants_displacement(path)
    assert np.abs(back - disp).max() < 1e-5 and np.abs(A2 - A).max() < 1e-5
    origin, spacing, direction = itk_geometry(A)
    assert np.allclose(spacing, h) and np.allclose(direction @ direction.T, np.eye(3))


def test_warp_labels_is_exact_and_itk_like():
    lab = torch.zeros((6, 6, 6), dtype=torch.int32)
    lab[2:4, 2:4, 2:4] = 2**31 - 1
    lab[0, 0, 0] = 2035
    disp = torch.zeros(3, 6, 6, 6)
    disp[0] = 0.49 * 2.0  # just under half a voxel (spacing 2): rounds back
    out = warp_labels(lab, disp, (2.0, 2.0, 2.0))
    assert out.dtype == torch.int32 and int(out[0, 0, 0]) == 2035 and int(out.max()) == 2**31 - 1
    assert int(out[-1, 0, 0]) == 0  # maps past the last voxel + 0.5: outside
    disp[0] = 0.51 * 2.0
    assert int(warp_labels(lab, disp, (2.0, 2.0, 2.0))[1, 2, 2]) == 2**31 - 1


def test_mismatched_grids_raise_clear_errors(tmp_path):
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    tgt = write(tmp_path / "target.nii.gz", phantom((12, 12, 10)), a)
    bad_shape = write(tmp_path / "moving_shape.nii.gz", phantom((12, 12, 12)), a)
    shifted = a.copy()
    shifted[0, 3] = 1.0
    bad_affine = write(tmp_path / "moving_affine.nii.gz", phantom((12, 12, 10)), shifted)
    with pytest.raises(QsInputError, match="moving_shape.nii.gz"):
        run_lddmm(bad_shape, tgt, tmp_path / "o1", iterations=1, progress=False)
    with pytest.raises(QsInputError, match="moving_affine.nii.gz.*affine"):
        run_lddmm(bad_affine, tgt, tmp_path / "o2", iterations=1, progress=False)
    lab = write(tmp_path / "labels.nii.gz", np.ones((12, 12, 12), np.int32), a)
    with pytest.raises(QsInputError, match="labels.nii.gz"):
        run_lddmm(tgt, tgt, tmp_path / "o3", labels=lab, iterations=1, progress=False)
    with pytest.raises(QsInputError, match="missing.nii.gz"):
        run_lddmm(tmp_path / "missing.nii.gz", tgt, tmp_path / "o4", iterations=1, progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(QsInputError, match="expected one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(QsInputError, match="not available"):
            resolve_device("cuda")


def test_shooter_rejects_wrong_shapes():
    K = FluidKernel((8, 8, 8), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="padded grid"):
        Shooter(K, compile=False).forward(torch.zeros(3, 8, 8, 7))
    with pytest.raises(ValueError, match="gamma"):
        FluidKernel((8, 8, 8), (1.0, 1.0, 1.0), gamma=0.0)


@pytest.mark.slow
def test_compiled_step_matches_eager():
    """torch.compile'd shooting and adjoint agree with eager (compiles for a minute or so)."""
    img = phantom((24, 24, 24))
    eager = Objective(img, img, (2.0, 2.0, 2.0), compile=False)
    comp = Objective(img, img, (2.0, 2.0, 2.0), compile=True)
    m0 = smooth_momentum(eager, 3.0)
    (e1, g1), (e2, g2) = eager(m0), comp(m0)
    assert comp.shooter.compiled
    assert abs(e1.total - e2.total) < 1e-6 and float((g1 - g2).norm() / g1.norm()) < 1e-4
