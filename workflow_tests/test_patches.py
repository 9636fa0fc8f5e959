"""Patch grid, extraction, background dropping, reassembly and the on-disk patch format."""

import json

import numpy as np
import pytest
import torch

from qs.io import QsInputError
from qs.patches import (
    PatchDataset,
    extract_patches,
    find_patch_files,
    foreground_starts,
    patch_starts,
    reassemble,
    write_pair_patches,
)


@pytest.mark.parametrize("shape", [(15, 15, 15), (16, 29, 30), (29, 43, 44), (40, 17, 57)])
def test_patch_starts_cover_grid(shape):
    starts = patch_starts(shape, 15, 14)
    cover = np.zeros(shape, dtype=int)
    for i, j, k in starts:
        cover[i : i + 15, j : j + 15, k : k + 15] += 1
    assert cover.min() >= 1
    for axis, n in enumerate(shape):
        s = np.unique(starts[:, axis])
        assert s[0] == 0 and s[-1] == n - 15  # first at 0, last flush with the border
        assert np.all(np.diff(s) <= 14) and np.all(np.diff(s) > 0)
    assert len(starts) == len({tuple(s) for s in starts.tolist()})


def test_patch_starts_regular_grid_and_errors():
    assert patch_starts((29, 29, 29)).tolist() == [[i, j, k] for i in (0, 14) for j in (0, 14) for k in (0, 14)]
    with pytest.raises(ValueError, match="smaller than the patch"):
        patch_starts((14, 20, 20))
    with pytest.raises(ValueError, match="uncovered"):
        patch_starts((30, 30, 30), patch=5, stride=6)


@pytest.mark.parametrize("as_torch", [False, True])
def test_extract_reassemble_exact(as_torch):
    rng = np.random.default_rng(0)
    field = rng.standard_normal((3, 31, 29, 40)).astype(np.float32) * 7.3
    if as_torch:
        field = torch.from_numpy(field)
    starts = patch_starts(field.shape[1:], 15, 14)
    patches = extract_patches(field, starts, 15)
    assert tuple(patches.shape) == (len(starts), 3, 15, 15, 15)
    assert type(patches) is type(field)
    back = reassemble(patches, starts, field.shape[1:])
    assert back.dtype == field.dtype
    assert (back == field).all()  # bit-exact, not just close


def test_reassemble_averages_and_leaves_uncovered_zero():
    starts = np.array([[0, 0, 0], [4, 0, 0]])
    patches = np.stack([np.full((1, 5, 5, 5), 1.0), np.full((1, 5, 5, 5), 3.0)])
    out = reassemble(patches, starts, (10, 6, 5))
    assert out[0, 0, 0, 0] == 1.0 and out[0, 4, 0, 0] == 2.0 and out[0, 8, 0, 0] == 3.0
    assert out[0, :, 5, :].max() == 0.0  # no patch covers j = 5


def test_foreground_starts_drops_only_double_background():
    shape = (43, 43, 43)
    moving = np.zeros(shape, np.float32)
    target = np.zeros(shape, np.float32)
    moving[2:6, 2:6, 2:6] = 1.0  # only in the first corner patch
    target[38:42, 38:42, 38:42] = 0.5  # only in the opposite corner patch
    starts = patch_starts(shape)
    kept = foreground_starts(moving, target, starts, 15, threshold=0.0)
    assert sorted(map(tuple, kept.tolist())) == [(0, 0, 0), (28, 28, 28)]
    # threshold: voxels <= threshold are background
    assert [tuple(s) for s in foreground_starts(moving, target, starts, 15, threshold=0.7).tolist()] == [(0, 0, 0)]
    # brute force on a random sparse image
    rng = np.random.default_rng(1)
    m = (rng.random(shape) > 0.9995).astype(np.float32)
    t = (rng.random(shape) > 0.9995).astype(np.float32)
    brute = [s for s in starts.tolist()
             if m[s[0]:s[0] + 15, s[1]:s[1] + 15, s[2]:s[2] + 15].any()
             or t[s[0]:s[0] + 15, s[1]:s[1] + 15, s[2]:s[2] + 15].any()]
    assert foreground_starts(torch.from_numpy(m), torch.from_numpy(t), starts, 15).tolist() == brute


def test_write_pair_patches_and_dataset(tmp_path):
    rng = np.random.default_rng(2)
    shape = (30, 29, 31)
    moving = np.zeros(shape, np.float32)
    moving[3:27, 3:26, 3:12] = rng.random((24, 23, 9)) + 0.1  # k >= 14 is background
    target = np.roll(moving, 2, axis=0)
    momentum = rng.standard_normal((3, *shape)).astype(np.float32)
    f1, side = write_pair_patches(moving, target, momentum, tmp_path / "a.npy", threshold=0.0)
    info = json.loads(side.read_text())
    starts = np.array(info["starts"])
    assert info["n_patches"] == len(starts) == 6 and info["n_patches_total"] == 18
    momentum2 = momentum * 2
    f2, _ = write_pair_patches(torch.from_numpy(target), torch.from_numpy(moving), torch.from_numpy(momentum2),
                               tmp_path / "b.npy")
    assert not list(tmp_path.glob("*.tmp*"))
    assert find_patch_files([tmp_path]) == [f1, f2]

    ds = PatchDataset([f1, f2])
    assert len(ds) == 2 * len(starts)
    assert isinstance(ds._array(0), np.memmap)
    vols = np.concatenate([moving[None], target[None], momentum])
    expect = extract_patches(vols, starts, 15)
    x, y = ds.batch([1, 0])
    assert x.shape == (2, 2, 15, 15, 15) and y.shape == (2, 3, 15, 15, 15)
    assert np.array_equal(x[0].numpy(), expect[1, :2]) and np.array_equal(y[1].numpy(), expect[0, 2:])
    n = len(starts)
    x, y = ds.batch([n + 1, 0, n + 1])  # mixed files, duplicates, any order
    assert torch.equal(y[0], y[2]) and np.array_equal(y[0].numpy(), 2 * expect[1, 2:])
    assert np.array_equal(x[0, 0].numpy(), expect[1, 1])
    xi, yi = ds[n]
    assert np.array_equal(yi.numpy(), 2 * expect[0, 2:])
    assert ds.abs_mean([0]) == pytest.approx(np.abs(expect[:, 2:]).mean(), rel=1e-5)
    assert ds.abs_mean() == pytest.approx(1.5 * np.abs(expect[:, 2:]).mean(), rel=1e-5)


def test_write_pair_patches_rejects_bad_input(tmp_path):
    img = np.zeros((20, 20, 20), np.float32)
    with pytest.raises(QsInputError, match="shapes"):
        write_pair_patches(img, img, np.zeros((3, 20, 20, 19)), tmp_path / "x.npy")
    bad = np.zeros((3, 20, 20, 20), np.float32)
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(QsInputError, match="NaN"):
        write_pair_patches(img, img, bad, tmp_path / "x.npy")
    assert not list(tmp_path.iterdir())
    with pytest.raises(QsInputError, match="does not exist"):
        find_patch_files([tmp_path / "nothing.npy"])
