import pytest
import torch

from maskgen.extractors import EXTRACTORS, build_extractor
from maskgen.extractors.base import StableExtractor, instance_normalize


def _volume(seed=0, shape=(24, 20, 28)):
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 1, *shape)
    x[..., 6:16, 5:14, 8:20] = 0.8
    x[..., 9:12, 8:11, 12:15] = 0.3
    return x + 0.02 * torch.rand(x.shape, generator=g)


def test_registry_and_unknown_name():
    assert {"mind", "none"} <= set(EXTRACTORS)
    with pytest.raises(ValueError, match="unknown extractor 'nope'"):
        build_extractor("nope")


def test_mind_shape_normalisation_and_frozen():
    ext = build_extractor("mind")
    ext.train()
    assert not ext.training
    f = ext(_volume())
    assert f.shape == (1, 12, 24, 20, 28)
    assert torch.allclose(f.mean(dim=(2, 3, 4)), torch.zeros(1, 12), atol=1e-4)
    assert torch.allclose(f.std(dim=(2, 3, 4), unbiased=False), torch.ones(1, 12), atol=1e-3)
    assert not f.requires_grad


def _mind_ssc_plain():
    """benchmarks/bench_mind.py's plain MIND-SSC, what maskgen computed before its in-place version."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mind.py"
    spec = importlib.util.spec_from_file_location("bench_mind", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.mind_ssc_plain


def test_fast_mind_ssc_gives_the_plain_implementations_numbers():
    from maskgen.extractors.mind import mind_ssc

    x = torch.cat([_volume(0), _volume(1, (24, 20, 28)) * 3.0])
    before = x.clone()
    for radius, dilation in ((2, 2), (1, 1), (2, 3)):
        fast, plain = mind_ssc(x, radius, dilation), _mind_ssc_plain()(x, radius, dilation)
        assert fast.shape == plain.shape == (2, 12, 24, 20, 28)
        assert torch.allclose(fast, plain, atol=1e-6, rtol=1e-5)
    assert torch.equal(x, before)  # the in-place steps never write into the input


def test_mind_is_contrast_invariant_where_intensities_are_not():
    ext = build_extractor("mind")
    x = _volume()
    inverted = 1.0 - x  # a T1 -> T2 style tissue-order flip
    rescaled = 0.3 * x + 0.1  # a linear intensity change
    f = ext(x)
    assert torch.allclose(f, ext(inverted), atol=1e-4)
    assert torch.allclose(f, ext(rescaled), atol=1e-3)
    assert not torch.allclose(instance_normalize(x), instance_normalize(inverted), atol=0.5)


def test_multiscale_mind_stacks_three_spacings_and_stays_contrast_invariant():
    from maskgen.extractors.mind import mind_ssc

    ext = build_extractor("mind-ms")
    x = _volume()
    f = ext(x)
    assert ext.out_channels == 36 and f.shape == (1, 36, 24, 20, 28)
    raw = ext(x, normalize=False)
    for k, d in enumerate((1, 2, 4)):
        assert torch.allclose(raw[:, 12 * k : 12 * (k + 1)], mind_ssc(x, 2, d), atol=1e-6)
    assert not torch.allclose(raw[:, :12], raw[:, 24:], atol=1e-2)  # the scales see different structure
    assert torch.allclose(f, ext(1.0 - x), atol=1e-3)  # float rounding of the finest scale: 2.4e-4
    with pytest.raises(ValueError, match="dilations must be positive"):
        build_extractor("mind-ms", dilations=(0, 2))


def test_padding_to_the_extractor_constraints_and_crop_back():
    class Sized(StableExtractor):
        out_channels = 2
        size_multiple = 16
        min_size = 32

        def compute(self, x):
            assert all(s % 16 == 0 and s >= 32 for s in x.shape[2:])
            return torch.cat([x, x * 2], 1)

    ext = Sized().freeze()
    f = ext(torch.rand(2, 1, 20, 33, 40))
    assert f.shape == (2, 2, 20, 33, 40)
