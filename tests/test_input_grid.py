"""Resampling back onto the input grid: slab by slab gives MONAI's whole-volume result, and flipped or
permuted grids are copied exactly."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from maskgen.inference.input_grid import index_map, to_input_grid, voxel_map


def monai_whole(values, affine, original):
    back = SpatialResample(mode="bilinear", padding_mode="border")(
        MetaTensor(values, affine=torch.as_tensor(affine)),
        dst_affine=torch.as_tensor(original.affine, dtype=torch.float64), spatial_size=original.shape[:3])
    return torch.as_tensor(back).float().clamp_min(0).numpy()


def probabilities(shape, seed=0):
    return torch.softmax(torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed)), dim=0)


def test_slab_by_slab_resampling_equals_monai_on_the_whole_volume():
    probs = probabilities((9, 10, 12))
    affine = np.diag([2.7, 1.9, 2.3, 1.0]) @ np.array(
        [[0, -1, 0, 30.0], [1, 0, 0, -20.0], [0, 0, 1, 5.0], [0, 0, 0, 1]])  # rotated, other spacing
    target = np.diag([1.1, 1.3, 0.9, 1.0])
    target[:3, 3] = [-12.0, 3.0, 4.0]
    original = nib.Nifti1Image(np.zeros((17, 15, 23), np.float32), target)
    whole = monai_whole(probs, affine, original)
    for slab_voxels in (17 * 15, 17 * 15 * 4, 10**9):  # one slice, 4 slices, everything at once
        np.testing.assert_allclose(to_input_grid(probs, affine, original, slab_voxels=slab_voxels), whole,
                                   atol=1e-5)


@pytest.mark.parametrize("axes_to", [(0, 1, 2), (1, 0, 2), (2, 0, 1)])
def test_a_flipped_or_permuted_grid_is_copied_exactly_as_monai_would_interpolate(axes_to):
    probs = probabilities((6, 7, 5), seed=1)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [4.0, -3.0, 1.0]
    # the input stores the same voxels with x and y flipped (LPS) and its axes permuted
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [5, 6]
    perm = np.eye(4)[[*axes_to, 3]].T
    target = affine @ flip @ perm
    shape = tuple(np.array((6, 7, 5))[list(axes_to)])
    original = nib.Nifti1Image(np.zeros(shape, np.float32), target)
    assert index_map(voxel_map(affine, target), (6, 7, 5), shape) is not None
    copied = to_input_grid(probs, affine, original)
    np.testing.assert_allclose(copied, monai_whole(probs, affine, original), atol=1e-6)
    assert copied[:, 0, 0, 0].tolist() == pytest.approx(probs[:, 5, 6, 0].tolist())


def test_a_grid_reaching_outside_the_source_or_off_by_half_a_voxel_is_resampled():
    affine = np.eye(4)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    assert index_map(voxel_map(affine, shifted), (6, 7, 5), (6, 7, 5)) is None  # 2 voxels past the edge
    half = np.eye(4)
    half[1, 3] = 0.5
    assert index_map(voxel_map(affine, half), (6, 7, 5), (6, 7, 5)) is None
    probs = probabilities((6, 7, 5), seed=2)
    for target in (shifted, half):
        original = nib.Nifti1Image(np.zeros((6, 7, 5), np.float32), target)
        np.testing.assert_allclose(to_input_grid(probs, affine, original), monai_whole(probs, affine, original),
                                   atol=1e-5)
