"""Shared fixtures: a small nnU-Net-layout dataset that is not the phantom.

Affines are not identity (LPS-like axis flips, an origin far from zero) and spacing is anisotropic and
not 1 mm, so any geometry slip in preprocessing or prediction shows up.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (22, 20, 14)
SPACING = (1.25, 0.9, 2.2)


def affine(spacing=SPACING, origin=(40.0, -12.5, 7.0)) -> np.ndarray:
    a = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like: x and y flipped
    a[:3, 3] = origin
    return a


def make_case(rng: np.random.Generator, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Image with two labelled blobs (different sizes and intensities) on a noisy background."""
    z = np.indices(shape).astype(float)
    lab = np.zeros(shape, np.uint8)
    c1 = rng.uniform([6, 6, 4], [10, 9, 6])
    c2 = rng.uniform([13, 11, 8], [16, 14, 10])
    r1, r2 = rng.uniform(3.5, 5.0), rng.uniform(2.0, 3.0)
    lab[((z - c1[:, None, None, None]) ** 2).sum(0) < r1**2] = 1
    lab[((z - c2[:, None, None, None]) ** 2).sum(0) < r2**2] = 2
    img = 100 + 5 * rng.standard_normal(shape)
    img[lab == 1] += 60
    img[lab == 2] -= 40
    return img.astype(np.float32), lab


def write_dataset(root: Path, n_train=4, n_val=1, n_test=2, seed=0, shape=SHAPE) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    aff = affine()
    for split, n in (("Tr", n_train), ("Val", n_val), ("Ts", n_test)):
        (root / f"images{split}").mkdir(exist_ok=True)
        (root / f"labels{split}").mkdir(exist_ok=True)
        for i in range(n):
            img, lab = make_case(rng, shape)
            case = f"case{split.lower()}{i:02d}"
            nib.save(nib.Nifti1Image(img, aff), root / f"images{split}" / f"{case}_0000.nii.gz")
            nib.save(nib.Nifti1Image(lab, aff), root / f"labels{split}" / f"{case}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "bright": 1, "dark": 2},
        "numTraining": n_train,
        "file_ending": ".nii.gz",
    }))
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "Dataset001_Tiny")
