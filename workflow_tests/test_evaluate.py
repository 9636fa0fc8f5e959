"""Overlap and deformation-error measures on known answers."""

import numpy as np
import pytest

from qs.evaluate import displacement_error_mm, error_percentiles, label_overlaps, total_target_overlap


def test_target_overlap_and_dice_known_answer():
    target = np.zeros((10, 10, 1), np.int32)
    target[:5] = 1001  # 50 voxels
    target[5:] = 2035  # 50 voxels
    warped = np.zeros_like(target)
    warped[:4] = 1001  # 40 voxels, all inside T_1001
    warped[4:] = 2035  # 60 voxels, 50 inside T_2035
    ov = label_overlaps(warped, target)
    assert ov[1001]["target_overlap"] == pytest.approx(40 / 50)
    assert ov[2035]["target_overlap"] == pytest.approx(50 / 50)
    assert ov[1001]["dice"] == pytest.approx(2 * 40 / 90)
    assert ov[2035]["dice"] == pytest.approx(2 * 50 / 110)
    assert total_target_overlap(ov) == pytest.approx(90 / 100)
    assert total_target_overlap(label_overlaps(target, target)) == 1.0


def test_labels_absent_from_target_are_skipped():
    target = np.ones((3, 3, 3), np.int32)
    warped = np.full_like(target, 7)
    ov = label_overlaps(warped, target, labels=[1, 7])
    assert list(ov) == [1] and ov[1]["target_overlap"] == 0.0


def test_deformation_error_percentiles():
    a = np.zeros((3, 4, 4, 4))  # (3, I, J, K)
    b = np.zeros_like(a)
    b[0] = 3.0
    b[1] = 4.0
    mask = np.zeros((4, 4, 4))
    mask[:2] = 1
    err = displacement_error_mm(a, b, mask)
    assert err.shape == (32,) and np.allclose(err, 5.0)
    p = error_percentiles(np.arange(1001) / 1000)
    assert list(p) == ["p0.3", "p5", "p25", "p50", "p75", "p95", "p99.7"]
    assert p["p50"] == pytest.approx(0.5) and p["p99.7"] == pytest.approx(0.997)
