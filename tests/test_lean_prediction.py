"""The memory-lean prediction path (no probabilities kept): the same masks with one class on the input grid
at a time."""

from __future__ import annotations

import numpy as np
import torch

from maskgen.evaluation.testing import train_and_test
from maskgen.inference.input_grid import argmax_on_input_grid, to_input_grid
from maskgen.inference.predict import Predictor
from maskgen.runtime.config import TrainConfig


def test_class_by_class_argmax_on_the_input_grid_equals_the_full_one(tiny_dataset):
    import nibabel as nib

    original = nib.load(next((tiny_dataset / "imagesTs").iterdir()))
    probs = torch.softmax(torch.randn(4, 9, 10, 12, generator=torch.Generator().manual_seed(1)), dim=0)
    affine = np.diag([2.7, 1.9, 2.3, 1.0]) @ np.array(
        [[0, -1, 0, 30.0], [1, 0, 0, -20.0], [0, 0, 1, 5.0], [0, 0, 0, 1]])  # rotated, other spacing
    full = to_input_grid(probs, torch.as_tensor(affine), original).argmax(0)
    lean = argmax_on_input_grid(probs, torch.as_tensor(affine), original)
    np.testing.assert_array_equal(lean, full)


def test_predict_without_probabilities_writes_the_same_masks_but_at_near_ties(tiny_dataset, tmp_path, monkeypatch):
    import maskgen.inference.predict as predict_mod

    run = tmp_path / "run"
    cfg = TrainConfig(dataset=str(tiny_dataset), out=str(run), method="maskgen", steps=2, batch_size=2,
                      patch_size=[16, 16, 16], val_every=2, base_width=2, n_poolings=2, convs_per_level=1,
                      num_workers=0, device="cpu", seed=0, spacing=[2.0, 1.5, 2.5])  # resampled both ways
    train_and_test(cfg, test=False, progress=False)
    pred = Predictor(run, device="cpu")
    stored = []
    real = predict_mod.sliding_window_probs

    def recording(*args, **kw):
        probs = real(*args, **kw)
        stored.append(probs.dtype)
        return probs

    monkeypatch.setattr(predict_mod, "sliding_window_probs", recording)
    for path in sorted((tiny_dataset / "imagesTs").iterdir()):
        with_probs, probs, _ = pred.predict_file(path)
        lean, none, _ = pred.predict_file(path, with_probabilities=False)
        assert none is None and probs is not None
        top2 = np.sort(probs, axis=0)[-2:]
        near_tie = (top2[1] - top2[0]) < 2e-3  # float16 keeps about 5e-4 of a probability
        assert np.array_equal(lean[~near_tie], with_probs[~near_tie])
        assert (lean != with_probs).mean() <= near_tie.mean()
    assert stored == [torch.float32, torch.float16] * 2  # the lean path halves the stored probabilities
    assert pred.probabilities_dtype == torch.float32


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
