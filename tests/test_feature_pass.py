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


class Box(StableExtractor):
    """A local extractor: the image and its 3^3 mean (replicate borders), features reach 1 voxel out."""

    name = "box"
    out_channels = 2

    def __init__(self, receptive_radius):
        super().__init__()
        self.receptive_radius = receptive_radius

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x, [1] * 6, mode="replicate")
        return torch.cat([x, torch.nn.functional.avg_pool3d(padded, 3, stride=1)], dim=1)


def _box_setup(shape=(1, 40, 24, 16)):
    torch.manual_seed(0)
    method = build_method("maskgen", image_channels=1, feature_channels=2, n_classes=3,
                          network={"base_width": 4, "n_poolings": 2, "convs_per_level": 1}).eval()
    return method, torch.rand(*shape)


def test_volume_pass_in_slabs_equals_the_whole_volume_and_needs_the_halo():
    method, image = _box_setup()  # streams along the first axis: window starts 0, 8, 16, 24
    whole = sliding_window_probs(method, Box(None).freeze(), image, (16, 16, 16), 0.5, feature_pass="volume")
    slabs = sliding_window_probs(method, Box(1).freeze(), image, (16, 16, 16), 0.5, feature_pass="volume")
    torch.testing.assert_close(slabs, whole, atol=1e-6, rtol=0)
    mask = torch.tensor([1.0, 0.0, 2.0])
    torch.testing.assert_close(
        sliding_window_probs(method, Box(1).freeze(), image, (16, 16, 16), 0.5, feature_mask=mask, feature_pass="volume"),
        sliding_window_probs(method, Box(None).freeze(), image, (16, 16, 16), 0.5, feature_mask=mask,
                             feature_pass="volume"), atol=1e-6, rtol=0)
    no_halo = sliding_window_probs(method, Box(0).freeze(), image, (16, 16, 16), 0.5, feature_pass="volume")
    assert (no_halo - whole).abs().max() > 1e-4  # a slab cut without its halo sees replicated borders


def test_slabs_compute_each_slice_once_and_hold_one_window_depth():
    from maskgen.runtime.slab_features import SlabFeatures

    ext = Box(1).freeze()
    image = torch.rand(1, 1, 40, 24, 16)
    computed = []
    original = ext.compute
    ext.compute = lambda x: computed.append(x.shape[2]) or original(x)
    slabs = SlabFeatures(ext, image)
    full = ext(image, normalize=False)
    computed.clear()
    for start in (0, 8, 16, 24):
        part = slabs(0, start, start + 16)
        assert part.shape == (1, 2, 16, 24, 16)
        torch.testing.assert_close(part, full[:, :, start:start + 16], atol=1e-6, rtol=0)
    # first slab 16 + 1 halo slice, then each new 8 slices with 1 halo slice on each side
    assert computed == [17, 10, 10, 9]
    with pytest.raises(ValueError, match="no bounded receptive radius"):
        SlabFeatures(Box(None).freeze(), image)


def test_mind_in_slabs_matches_the_whole_volume_and_small_volumes_fall_back():
    from maskgen.extractors.mind import MindSSCExtractor

    torch.manual_seed(0)
    method = build_method("maskgen", image_channels=1, feature_channels=12, n_classes=3,
                          network={"base_width": 4, "n_poolings": 2, "convs_per_level": 1}).eval()
    image = torch.rand(1, 40, 24, 16)
    mind = MindSSCExtractor().freeze()
    assert mind.receptive_radius == 4
    slabs = sliding_window_probs(method, mind, image, (16, 16, 16), 0.5, feature_pass="volume")
    mind.receptive_radius = None  # the whole-volume pass
    whole = sliding_window_probs(method, mind, image, (16, 16, 16), 0.5, feature_pass="volume")
    # equal but for the variance clamp, which follows the mean over the slab (it does not bind on noise)
    torch.testing.assert_close(slabs, whole, atol=1e-5, rtol=0)
    small = torch.rand(1, 12, 24, 16)  # smaller than the window along one axis: the whole-volume pass
    out = sliding_window_probs(method, MindSSCExtractor().freeze(), small, (16, 16, 16), 0.5, feature_pass="volume")
    assert out.shape == (3, 12, 24, 16)


def test_receptive_radii_of_combined_and_network_extractors():
    from maskgen.extractors import build_extractor
    from maskgen.extractors.channelwise import ChannelwiseExtractor

    assert build_extractor("mind-ms").receptive_radius == 6  # dilations up to 4, box radius 2
    assert build_extractor("mind+mind-ms").receptive_radius == 6
    assert build_extractor("mind+maskgen-synth").receptive_radius is None  # a UNet: no slabs
    assert ChannelwiseExtractor(build_extractor("mind"), [0, 1]).receptive_radius == 4
