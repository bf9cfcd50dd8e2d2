"""The memory-lean prediction path (no probabilities kept): the same masks with one class on the input grid
at a time, and a softmax that never doubles the logits."""

from __future__ import annotations

import numpy as np
import torch

from maskgen.evaluation.testing import train_and_test
from maskgen.inference.predict import Predictor, argmax_on_input_grid, to_input_grid
from maskgen.runtime.config import TrainConfig
from maskgen.runtime.sliding import softmax_in_slabs


def test_softmax_in_slabs_equals_softmax_and_reuses_the_tensor():
    logits = torch.randn(5, 37, 6, 4, generator=torch.Generator().manual_seed(0)) * 10
    expected = torch.softmax(logits, dim=0)
    out = softmax_in_slabs(logits.clone(), slab=8)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    same = logits.clone()
    assert softmax_in_slabs(same, slab=8).data_ptr() == same.data_ptr()  # in place: no second full copy


def test_class_by_class_argmax_on_the_input_grid_equals_the_full_one(tiny_dataset):
    import nibabel as nib

    original = nib.load(next((tiny_dataset / "imagesTs").iterdir()))
    probs = torch.softmax(torch.randn(4, 9, 10, 12, generator=torch.Generator().manual_seed(1)), dim=0)
    affine = np.diag([2.7, 1.9, 2.3, 1.0]) @ np.array(
        [[0, -1, 0, 30.0], [1, 0, 0, -20.0], [0, 0, 1, 5.0], [0, 0, 0, 1]])  # rotated, other spacing
    full = to_input_grid(probs, torch.as_tensor(affine), original).argmax(0)
    lean = argmax_on_input_grid(probs, torch.as_tensor(affine), original)
    np.testing.assert_array_equal(lean, full)


def test_predict_without_probabilities_writes_the_same_masks(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = TrainConfig(dataset=str(tiny_dataset), out=str(run), method="maskgen", steps=2, batch_size=2,
                      patch_size=[16, 16, 16], val_every=2, base_width=2, n_poolings=2, convs_per_level=1,
                      num_workers=0, device="cpu", seed=0, spacing=[2.0, 1.5, 2.5])  # resampled both ways
    train_and_test(cfg, test=False, progress=False)
    pred = Predictor(run, device="cpu")
    for path in sorted((tiny_dataset / "imagesTs").iterdir()):
        with_probs, probs, _ = pred.predict_file(path)
        lean, none, _ = pred.predict_file(path, with_probabilities=False)
        assert none is None and probs is not None
        np.testing.assert_array_equal(lean, with_probs)


def test_the_identity_grid_skips_resampling_with_the_same_values(tiny_dataset):
    import nibabel as nib

    probs = torch.softmax(torch.randn(3, 6, 7, 5, generator=torch.Generator().manual_seed(2)), dim=0)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    affine[:3, 3] = [4.0, -3.0, 1.0]
    same = nib.Nifti1Image(np.zeros((6, 7, 5), np.float32), affine)
    np.testing.assert_array_equal(to_input_grid(probs, torch.as_tensor(affine), same), probs.numpy())
    nudged = affine.copy()
    nudged[0, 3] += 0.5  # half a voxel off: resampled, not copied
    moved = nib.Nifti1Image(np.zeros((6, 7, 5), np.float32), nudged)
    assert not np.allclose(to_input_grid(probs, torch.as_tensor(affine), moved), probs.numpy())
