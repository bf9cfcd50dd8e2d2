"""The streamed sliding window equals MONAI's sliding_window_inference (then softmax) to float rounding."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from maskgen.runtime.streaming_windows import stream_axis, streamed_sliding_window


def _net(c_in: int, classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv3d(c_in, classes, 3, padding=1).eval()


@pytest.mark.parametrize("shape,roi,overlap,batch", [
    ((40, 24, 20), (16, 16, 16), 0.5, 2),   # streamed along the first axis
    ((18, 20, 45), (16, 16, 12), 0.25, 3),  # along the last; anisotropic window; a partial last step
    ((10, 30, 12), (16, 16, 16), 0.5, 1),   # two axes smaller than the window: padded as MONAI pads
    ((16, 16, 16), (16, 16, 16), 0.5, 2),   # one window
])
def test_streamed_windows_equal_monai(shape, roi, overlap, batch):
    net = _net(2, 5)
    x = torch.randn(1, 2, *shape)
    ours = streamed_sliding_window(x, roi, net, overlap=overlap, sw_batch_size=batch)
    monai = torch.softmax(sliding_window_inference(x, roi, batch, net, overlap=overlap, mode="gaussian")[0], 0)
    assert ours.shape == (5, *shape) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.sum(0), torch.ones(shape))


def test_the_stream_runs_along_the_axis_longest_relative_to_the_window():
    assert stream_axis((512, 512, 300), (128, 128, 128)) == 0
    assert stream_axis((100, 100, 300), (128, 128, 128)) == 2
    assert stream_axis((64, 64, 64), (32, 16, 32)) == 1


def test_the_accumulator_holds_one_window_depth_not_the_volume(monkeypatch):
    import maskgen.runtime.streaming_windows as sw

    sizes = []
    real = torch.zeros

    def recording_zeros(*shape, **kw):
        t = real(*shape, **kw)
        sizes.append(tuple(t.shape))
        return t

    monkeypatch.setattr(sw.torch, "zeros", recording_zeros)
    streamed_sliding_window(torch.randn(1, 1, 96, 32, 32), (16, 16, 16), _net(1, 3))
    assert sizes and all(s[1] == 16 for s in sizes)  # (classes or 1, window depth, 32, 32)


def test_a_batch_of_volumes_is_refused():
    with pytest.raises(ValueError, match=r"expected one volume \(1, C, D, H, W\)"):
        streamed_sliding_window(torch.zeros(2, 1, 8, 8, 8), (8, 8, 8), _net(1, 2))


@pytest.mark.parametrize("shape,roi", [((40, 24, 20), (16, 16, 16)), ((18, 20, 45), (16, 16, 12))])
def test_slab_channels_equal_the_same_channels_given_as_input(shape, roi):
    torch.manual_seed(1)
    image, extra = torch.rand(1, 1, *shape), torch.rand(1, 2, *shape)
    net = _net(3, 4)
    asked = []

    def slab(axis, start, stop):
        asked.append(start)
        return extra.narrow(axis + 2, start, stop - start)

    expected = streamed_sliding_window(torch.cat([image, extra], 1), roi, net, overlap=0.5)
    got = streamed_sliding_window(image, roi, net, overlap=0.5, slab_channels=slab)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert asked == sorted(set(asked))  # once per window start, in increasing order
    with pytest.raises(ValueError, match="at least as large as the window"):
        streamed_sliding_window(image[:, :, :8], roi, net, slab_channels=slab)
