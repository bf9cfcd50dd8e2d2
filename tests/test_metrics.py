"""Dice and HD95 against values worked out by hand."""

import math

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist

from maskgen.metrics import dice_per_class, hd95_per_class


def _cube(shape, start, size, value=1):
    a = np.zeros(shape, dtype=np.int64)
    a[tuple(slice(s, s + size) for s in start)] = value
    return a


def test_dice_exact_values_and_conventions():
    ref = np.zeros((4, 4, 4), dtype=np.int64)
    pred = np.zeros_like(ref)
    ref[0, 0, :4] = 1  # 4 voxels
    pred[0, 0, :2] = 1  # 2 voxels, both inside ref -> 2*2/(2+4)
    ref[1, 1, 1] = 2  # class 2 only in ref -> 0
    pred[2, 2, 2] = 3  # class 3 only in pred -> 0
    d = dice_per_class(pred, ref, [1, 2, 3, 4])  # class 4 absent from both -> NaN
    assert d[1] == pytest.approx(4 / 6)
    assert d[2] == 0.0 and d[3] == 0.0
    assert math.isnan(d[4])
    assert dice_per_class(ref, ref, [1, 2])[1] == 1.0


def test_dice_shifted_cube():
    n, k = 6, 2
    ref = _cube((12, 12, 12), (2, 2, 2), n)
    pred = _cube((12, 12, 12), (2 + k, 2, 2), n)
    assert dice_per_class(pred, ref, [1])[1] == pytest.approx((n - k) / n)


def test_shape_mismatch_names_both_shapes():
    a, b = np.zeros((3, 4, 5), int), np.zeros((3, 4, 6), int)
    with pytest.raises(ValueError, match=r"\(3, 4, 5\).*\(3, 4, 6\)"):
        dice_per_class(a, b, [1])
    with pytest.raises(ValueError, match=r"\(3, 4, 5\).*\(3, 4, 6\)"):
        hd95_per_class(a, b, [1], (1, 1, 1))


@pytest.mark.parametrize("axis,k", [(0, 1), (0, 2), (1, 3), (2, 2)])
def test_hd95_shifted_cube_anisotropic(axis, k):
    spacing = (2.0, 0.7, 1.5)
    n = 10
    start = [3, 3, 3]
    ref = _cube((20, 20, 20), start, n)
    start[axis] += k
    pred = _cube((20, 20, 20), start, n)
    hd = hd95_per_class(pred, ref, [1], spacing)
    assert hd[1] == pytest.approx(k * spacing[axis], rel=1e-5)


def test_hd95_empty_conventions_and_identity():
    ref = _cube((10, 10, 10), (2, 2, 2), 4)
    pred = ref.copy()
    pred[pred == 1] = 2  # class 1 missing in pred, class 2 missing in ref
    hd = hd95_per_class(pred, ref, [1, 2, 3], (1.0, 1.0, 1.0))
    assert hd[1] == math.inf and hd[2] == math.inf
    assert math.isnan(hd[3])
    assert hd95_per_class(ref, ref, [1], (1.0, 2.0, 3.0))[1] == 0.0


def _brute_hd95(p, r, spacing):
    """Reference: surface voxels by erosion, all pairwise distances, linear 95th percentile."""
    sp = np.asarray(spacing)
    ep = np.argwhere(p & ~binary_erosion(p)) * sp
    er = np.argwhere(r & ~binary_erosion(r)) * sp
    dist = cdist(ep, er)
    return max(np.percentile(dist.min(1), 95), np.percentile(dist.min(0), 95))


def test_hd95_matches_brute_force_on_irregular_blobs():
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:16, :18, :14]
    spacing = (1.8, 0.6, 1.1)
    ref = (((zz - 8) / 5) ** 2 + ((yy - 9) / 6) ** 2 + ((xx - 7) / 4) ** 2 < 1).astype(np.int64)
    pred = ((((zz - 7) / 4) ** 2 + ((yy - 10) / 7) ** 2 + ((xx - 6) / 4) ** 2) < 1).astype(np.int64)
    pred[rng.random(pred.shape) < 0.02] = 1  # scattered false positives stress the percentile
    got = hd95_per_class(pred, ref, [1], spacing)[1]
    assert got == pytest.approx(_brute_hd95(pred == 1, ref == 1, spacing), rel=1e-4)


def test_hd95_wrong_spacing_length():
    a = _cube((6, 6, 6), (1, 1, 1), 2)
    with pytest.raises(ValueError, match="spacing"):
        hd95_per_class(a, a, [1], (1.0, 1.0))
