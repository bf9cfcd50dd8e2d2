"""Stable features once per volume: for an extractor without a receptive field, ``volume`` (computed once,
each window normalised by its own statistics) is exactly what the per-window pass computes."""

from __future__ import annotations

import pytest
import torch

from maskgen.extractors.base import StableExtractor
from maskgen.methods import build_method
from maskgen.runtime.sliding import sliding_window_probs


class Pointwise(StableExtractor):
    name = "pointwise"
    out_channels = 2

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x * x], dim=1)


def _setup():
    torch.manual_seed(0)
    ext = Pointwise().freeze()
    method = build_method("maskgen", image_channels=1, feature_channels=2, n_classes=3,
                          network={"base_width": 4, "n_poolings": 2, "convs_per_level": 1}).eval()
    image = torch.rand(1, 20, 24, 16)
    return ext, method, image


def test_volume_pass_equals_the_window_pass_for_a_pointwise_extractor():
    ext, method, image = _setup()
    window = sliding_window_probs(method, ext, image, (16, 16, 16), 0.5, feature_pass="window")
    volume = sliding_window_probs(method, ext, image, (16, 16, 16), 0.5, feature_pass="volume")
    torch.testing.assert_close(volume, window, atol=1e-5, rtol=0)
    for mask in ("image", "features", torch.tensor([0.0, 2.0, 0.0])):
        w = sliding_window_probs(method, ext, image, (16, 16, 16), 0.5, feature_mask=mask, feature_pass="window")
        v = sliding_window_probs(method, ext, image, (16, 16, 16), 0.5, feature_mask=mask, feature_pass="volume")
        torch.testing.assert_close(v, w, atol=1e-5, rtol=0)


def test_volume_norm_normalises_over_the_volume_and_bad_passes_are_refused():
    ext, method, image = _setup()
    window = sliding_window_probs(method, ext, image, (16, 16, 16), 0.5, feature_pass="window")
    norm = sliding_window_probs(method, ext, image, (16, 16, 16), 0.5, feature_pass="volume-norm")
    assert norm.shape == window.shape
    torch.testing.assert_close(norm.sum(0), torch.ones(norm.shape[1:]), atol=1e-5, rtol=0)
    assert not torch.allclose(norm, window, atol=1e-4)  # other statistics, other input
    # a window covering the whole volume has the volume's statistics: then all three agree
    image = image[:, :16]  # (16, 24, 16): the whole volume in one window, sizes divisible by 4
    whole = tuple(image.shape[1:])
    a = sliding_window_probs(method, ext, image, whole, 0.5, feature_pass="window")
    b = sliding_window_probs(method, ext, image, whole, 0.5, feature_pass="volume-norm")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="feature pass must be one of"):
        sliding_window_probs(method, ext, image, (16, 16, 16), 0.5, feature_pass="per-voxel")
