"""The working grid: FFT-friendly sizes, coverage of the mask, exact label resampling."""

import nibabel as nib
import numpy as np

from qs.grid import resample_to_grid, working_grid
from qs.lddmm.kernel import fft_friendly


def test_fft_friendly():
    assert [fft_friendly(n) for n in (1, 7, 11, 97, 233, 240)] == [1, 8, 12, 100, 240, 240]


def test_working_grid_covers_the_mask_with_margin():
    mask = np.zeros((40, 50, 30), np.uint8)
    mask[5:30, 10:41, 3:20] = 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-20, -25, -10)
    img = nib.Nifti1Image(mask, affine)
    shape, grid = working_grid(img, spacing=2.0, margin_mm=4.0)
    assert all(fft_friendly(n) == n for n in shape)
    assert np.allclose(np.diag(grid)[:3], 2.0)
    lo = grid[:3, 3]
    hi = lo + (np.array(shape) - 1) * 2.0
    world_lo = affine[:3, 3] + np.array([5, 10, 3])
    world_hi = affine[:3, 3] + np.array([29, 40, 19])
    assert np.all(lo <= world_lo - 4.0 + 1e-6) and np.all(hi >= world_hi + 4.0 - 1e-6)
    resampled = resample_to_grid(img, shape, grid, order=1)
    assert abs(resampled.sum() * 8 - mask.sum()) / mask.sum() < 0.05  # volume preserved (2 mm voxels = 8 mm^3)


def test_nearest_resampling_keeps_label_ids():
    lab = np.zeros((20, 20, 20), np.int32)
    lab[2:10] = 2035
    lab[10:18] = 1_000_001
    img = nib.Nifti1Image(lab, np.eye(4))
    out = resample_to_grid(img, (9, 9, 9), np.diag([2.0, 2.0, 2.0, 1.0]), order=0)
    assert out.dtype == np.int32 and set(np.unique(out)) == {0, 2035, 1_000_001}
