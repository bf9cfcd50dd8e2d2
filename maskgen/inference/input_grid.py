"""Values on the preprocessed grid back onto the input file's own voxel grid, in bounded memory.

MONAI's ``SpatialResample`` builds a coordinate grid for every output voxel at once (several values per
voxel: the class-by-class argmax of a 512 x 512 x 300 CT with 16 classes peaked at 8.4 GB that way, 4.0 GB
now; ``benchmarks/bench_resample_memory.py``), so the input grid is filled in slabs along its
last axis, each slab resampled by MONAI with its own destination affine: the same formula per voxel, a
coordinate grid one slab deep. Where the two grids differ only by axis flips or permutations and whole-voxel
shifts (an LPS input at the run's spacing), bilinear interpolation samples voxel centres exactly, so the
values are copied by indexing instead: exact, and no coordinate grid at all.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

#: output voxels resampled at once (512 x 512 x 32): the coordinate grid is one slab deep
SLAB_VOXELS = 512 * 512 * 32


def voxel_map(affine, original_affine) -> np.ndarray:
    """The 4 x 4 map from the input grid's voxel indices to the preprocessed grid's."""
    return np.linalg.inv(np.asarray(affine, float)) @ np.asarray(original_affine, float)


def index_map(mapping: np.ndarray, source_shape, target_shape, atol: float = 1e-4):
    """``(axes, flips, offsets)`` when ``mapping`` sends every target voxel exactly onto a source voxel inside
    the source (a signed axis permutation plus whole-voxel shifts); None otherwise."""
    rot, shift = mapping[:3, :3], mapping[:3, 3]
    rounded = np.round(rot)
    if not np.allclose(rot, rounded, atol=atol) or not np.allclose(shift, np.round(shift), atol=atol):
        return None
    if not (np.abs(rounded).sum(0) == 1).all() or not (np.abs(rounded).sum(1) == 1).all():
        return None
    shift = np.round(shift).astype(int)
    axes = [int(np.flatnonzero(rounded[:, j])[0]) for j in range(3)]  # source axis of target axis j
    flips = [rounded[axes[j], j] < 0 for j in range(3)]
    for j in range(3):
        first = shift[axes[j]]
        last = first + (target_shape[j] - 1) * (-1 if flips[j] else 1)
        if min(first, last) < 0 or max(first, last) >= source_shape[axes[j]]:
            return None  # part of the target lies outside the source: border padding applies, resample
    return axes, flips, shift


def copy_by_index(values: torch.Tensor, axes, flips, shift, target_shape) -> torch.Tensor:
    """The exact resampling of a signed-permutation map: index the source voxels each target voxel hits."""
    index = []
    for j in range(3):
        step = -1 if flips[j] else 1
        index.append(torch.as_tensor(shift[axes[j]] + step * np.arange(target_shape[j]), dtype=torch.long))
    order = [axes.index(a) for a in range(3)]  # the target axis that source axis a becomes
    picked = values
    for a in range(3):
        picked = picked.index_select(1 + a, index[order[a]])
    return picked.permute(0, *(1 + a for a in axes))


def to_input_grid(values: torch.Tensor, affine, original, slab_voxels: int = SLAB_VOXELS) -> np.ndarray:
    """(C, D, H, W) values on the preprocessed grid, resampled (bilinear, border padding) onto the input
    file's own grid; float32, negative values clamped to 0."""
    shape = tuple(original.shape[:3])
    values = torch.as_tensor(values)
    mapping = voxel_map(affine, original.affine)
    exact = index_map(mapping, tuple(values.shape[1:]), shape)
    if exact is not None:
        # the same grid up to flips and permutations (a RAS or LPS input at the run's spacing)
        return copy_by_index(values, *exact, shape).float().clamp_min(0).contiguous().numpy()
    out = np.empty((values.shape[0], *shape), np.float32)
    source = MetaTensor(values.float(), affine=torch.as_tensor(np.asarray(affine, float)))
    resample = SpatialResample(mode="bilinear", padding_mode="border")
    depth = max(1, slab_voxels // (shape[0] * shape[1]))
    for z0 in range(0, shape[2], depth):
        z1 = min(shape[2], z0 + depth)
        shifted = np.asarray(original.affine, float) @ np.array(
            [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, z0], [0, 0, 0, 1]], float)
        slab = resample(source, dst_affine=torch.as_tensor(shifted, dtype=torch.float64),
                        spatial_size=(shape[0], shape[1], z1 - z0))
        out[:, :, :, z0:z1] = torch.as_tensor(slab).float().clamp_min(0).numpy()
    return out


def argmax_on_input_grid(probs: torch.Tensor, affine, original) -> np.ndarray:
    """``to_input_grid(probs, ...).argmax(0)``, one class at a time: the same classes (ties go to the lower
    class, as argmax's), with one class on the input grid in memory instead of all."""
    best_value, best_class = None, None
    for c in range(probs.shape[0]):
        value = to_input_grid(probs[c:c + 1], affine, original)[0]
        if best_value is None:
            best_value, best_class = value, np.zeros(value.shape, np.uint8 if probs.shape[0] <= 256 else np.int32)
            continue
        better = value > best_value
        best_class[better] = c
        np.maximum(best_value, value, out=best_value)
    return best_class
