"""anatomix: checkpoint compatibility with the official state_dicts, loading, and the frozen extractor."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).parents[1]
if str(REPO) not in sys.path:  # the package is not installed in the venv; run from the checkout
    sys.path.insert(0, str(REPO))

from maskgen.extractors.anatomix import (  # noqa: E402
    AnatomixDevExtractor,
    AnatomixExtractor,
    AnatomixUNet,
    build_anatomix,
    load_anatomix_weights,
)
from maskgen.extractors.base import EXTRACTORS, build_extractor, instance_normalize  # noqa: E402

SPEC = REPO.parent / "shared" / "spec"

torch.set_num_threads(2)


def _spec(name: str) -> Path:
    if not SPEC.is_dir():
        pytest.skip(f"spec folder {SPEC} not available")
    return SPEC / name


def _read_tsv(name: str) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """key -> (shape, dtype); dtype None where the file has no dtype column (the dev file lacks it)."""
    rows = {}
    for line in _spec(name).read_text().splitlines()[1:]:
        if not line.strip():
            continue
        cols = line.split("\t")
        inner = cols[1].strip("()").replace(" ", "")
        shape = tuple(int(s) for s in inner.split(",") if s)
        rows[cols[0]] = (shape, cols[2] if len(cols) > 2 else None)
    return rows


def _ours(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def unet() -> AnatomixUNet:
    torch.manual_seed(0)
    return build_anatomix().eval()


def _randomise_buffers(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics, so a loader that skipped buffers would be caught."""
    g = torch.Generator().manual_seed(seed)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=g))
        elif name.endswith("running_var"):
            b.copy_(0.5 + torch.rand(b.shape, generator=g))
        elif name.endswith("num_batches_tracked"):
            b.fill_(1000 + seed)


# --------------------------------------------------------------------------- structure vs the spec


def test_state_dict_matches_official_default(unet):
    spec = _read_tsv("anatomix_state_dict.tsv")
    ours = _ours(unet)
    assert list(ours) == list(spec)  # same keys, same order
    assert len(ours) == 115
    for k, (shape, dtype) in spec.items():
        assert ours[k] == (shape, dtype), k
    assert sum(p.numel() for p in unet.parameters()) == 5_899_344
    assert sum(b.numel() for b in unet.buffers()) == 2_995
    assert not any(k.endswith(".bias") and v.ndim == 5 for k, v in unet.state_dict().items())


def test_state_dict_matches_official_dev():
    spec = _read_tsv("anatomix_dev_state_dict.tsv")
    with torch.device("meta"):  # 94M parameters: shapes only, no memory or init time
        dev = build_anatomix("anatomix-dev")
    ours = _ours(dev)
    assert list(ours) == list(spec)
    assert len(ours) == 48 and len(dev.model) == 80
    for k, (shape, dtype) in spec.items():
        assert ours[k][0] == shape, k
        assert ours[k][1] == (dtype or "torch.float32"), k
    assert sum(p.numel() for p in dev.parameters()) == 94_369_568
    assert dev.penultimate_index == 73 and dev.output_index == 79


def test_layers_and_shapes_match_spec(unet):
    rows = [
        ln.split("\t") for ln in _spec("anatomix_layers.txt").read_text().splitlines() if ln and ln[0] != "#"
    ]
    assert len(unet.model) == len(rows) == 66
    assert unet.skip_indices == [8, 15, 22, 29] and unet.upsample_indices == [37, 44, 51, 58]
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        out, feats = unet(x, layers=list(range(66)))
    for (idx, module, shape), f in zip(rows, feats):
        assert repr(unet.model[int(idx)]) == module, idx
        ref = tuple(int(s) for s in shape.strip("()").split(","))
        expect = (1, ref[1], *(32 * s // 64 for s in ref[2:]))  # spec is for 64^3; ours is 32^3
        assert tuple(f.shape) == expect, idx
    assert torch.equal(out, feats[-1])


def test_forward_layers_api(unet):
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        out = unet(x)
        out2, (f59, f60, f65) = unet(x, layers=[59, 60, -1])
        (e59,) = unet(x, layers=[59], encode_only=True)
    assert torch.equal(out, out2) and torch.equal(out, f65) and torch.equal(f59, e59)
    assert (f60 < 0).any()  # a BN output, not overwritten by the in-place ReLU after it
    with pytest.raises(IndexError):
        unet(x, layers=[66])


# --------------------------------------------------------------------------- weights


def test_load_roundtrip_bit_identical(unet, tmp_path):
    _randomise_buffers(unet, seed=1)
    path = tmp_path / "anatomix.pth"
    torch.save(unet.state_dict(), path)
    torch.manual_seed(123)
    fresh = load_anatomix_weights(build_anatomix(), path).eval()
    for k, v in unet.state_dict().items():
        w = fresh.state_dict()[k]
        assert w.dtype == v.dtype and torch.equal(w, v), k
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(unet(x), fresh(x))


@pytest.mark.parametrize("wrap", ["orig_mod", "state_dict_module", "model_entry"])
def test_load_wrapped_and_prefixed(unet, tmp_path, wrap):
    sd = unet.state_dict()
    if wrap == "orig_mod":  # torch.compile'd checkpoint
        ckpt = {f"_orig_mod.{k}": v for k, v in sd.items()}
    elif wrap == "state_dict_module":  # DDP inside a training checkpoint
        ckpt = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}
    else:
        ckpt = {"model": dict(sd)}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    fresh = load_anatomix_weights(build_anatomix(), path)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())


def test_load_mismatch_names_file(tmp_path):
    path = tmp_path / "wrong_net.pth"
    torch.save(AnatomixUNet(ngf=8).state_dict(), path)
    with pytest.raises(ValueError, match="wrong_net.pth") as e:
        load_anatomix_weights(build_anatomix(), path)
    assert "model.0.weight" in str(e.value)
    sd = build_anatomix().state_dict()
    del sd["model.65.weight"]
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"missing model\.65\.weight"):
        load_anatomix_weights(build_anatomix(), path)


def test_missing_weights_message(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_anatomix_weights(build_anatomix(), tmp_path / "nope.pth")
    for needle in (
        "--extractor-weights",
        "anatomix.pth",
        "neel-dey/anatomix",
        "neeldey/anatomix",
        "nope.pth",
    ):
        assert needle in str(e.value)
    with pytest.raises(FileNotFoundError, match="--extractor-weights"):
        AnatomixExtractor()
    with pytest.raises(FileNotFoundError, match="anatomix.pth"):
        build_extractor("anatomix")


# --------------------------------------------------------------------------- extractor


@pytest.fixture(scope="module")
def ext() -> AnatomixExtractor:
    torch.manual_seed(0)
    e = AnatomixExtractor(allow_random=True)
    _randomise_buffers(e.unet, seed=2)
    return e


def test_registered():
    assert EXTRACTORS["anatomix"] is AnatomixExtractor
    assert EXTRACTORS["anatomix-dev"] is AnatomixDevExtractor


def test_extractor_odd_size_normalised_deterministic_frozen(ext):
    assert (ext.layer, ext.out_channels, ext.size_multiple, ext.min_size) == (59, 16, 16, 32)
    stats = {k: v.clone() for k, v in ext.unet.state_dict().items()}
    x = torch.rand(2, 1, 40, 36, 50)
    ext.train()
    assert not ext.training and not any(m.training for m in ext.modules())
    assert not any(p.requires_grad for p in ext.parameters())
    f = ext(x)
    assert f.shape == (2, 16, 40, 36, 50) and not f.requires_grad
    mean, std = f.mean(dim=(2, 3, 4)), f.std(dim=(2, 3, 4), unbiased=False)
    assert mean.abs().max() < 1e-4 and (std - 1).abs().max() < 1e-3
    assert torch.equal(f, ext(x))
    assert all(torch.equal(v, stats[k]) for k, v in ext.unet.state_dict().items())  # BN stats untouched


def test_extractor_loads_weights(unet, tmp_path):
    path = tmp_path / "anatomix.pth"
    torch.save(unet.state_dict(), path)
    e = AnatomixExtractor(weights=path, layer="final")
    assert e.layer == 65 and e.out_channels == 16
    assert all(torch.equal(e.unet.state_dict()[k], v) for k, v in unet.state_dict().items())
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        ref = unet(x)
    assert torch.allclose(e(x), instance_normalize(ref), atol=1e-4)


def test_layer_choice():
    e = AnatomixExtractor(allow_random=True, layer="output")
    assert e.layer == 65
    assert AnatomixExtractor(allow_random=True, layer=-1).layer == 65
    assert AnatomixExtractor(allow_random=True, layer=58).out_channels == 48  # after the concat
    assert AnatomixExtractor(allow_random=True, layer=8).out_channels == 16
    for bad in (57, 30, 37):  # 1/2, 1/16, 1/8 resolution
        with pytest.raises(ValueError, match="resolution"):
            AnatomixExtractor(allow_random=True, layer=bad)
    with pytest.raises(ValueError):
        AnatomixExtractor(allow_random=True, layer="middle")
    with pytest.raises(ValueError):
        AnatomixExtractor(allow_random=True, tile_size=40)


def test_dev_extractor_attributes():
    with torch.device("meta"):
        d = AnatomixDevExtractor(allow_random=True)
    assert (d.variant, d.layer, d.out_channels, d.size_multiple, d.min_size) == (
        "anatomix-dev",
        73,
        32,
        32,
        64,
    )
    with pytest.raises(FileNotFoundError, match="--extractor-weights"):
        AnatomixDevExtractor()


def _blend_safe(n: int, roi: int, overlap: float, halo: int) -> list[int]:
    """Coordinates where every window covering them (MONAI's scan: starts at multiples of
    int(roi * (1 - overlap)), the last one flush with the end) sees at least ``halo`` voxels of real
    context on both sides, so tiled and untiled must agree."""
    step = int(roi * (1 - overlap))
    starts = sorted({min(i * step, n - roi) for i in range(-(-(n - roi) // step) + 1)})
    safe = []
    for c in range(n):
        ok = True
        for s in starts:
            if s <= c < s + roi:
                lo_ok = s == 0 or c - s >= halo
                hi_ok = s + roi == n or s + roi - 1 - c >= halo
                ok &= lo_ok and hi_ok
        if ok:
            safe.append(c)
    return safe


def test_tiling_exact_for_local_layer(ext):
    """Index 8 has a 7^3 receptive field: away from tile seams tiled == untiled, blending included."""
    sd = ext.unet.state_dict()
    full = AnatomixExtractor(allow_random=True, layer=8)
    tiled = AnatomixExtractor(allow_random=True, layer=8, tile_size=32, tile_overlap=0.25)
    for e in (full, tiled):
        e.unet.load_state_dict(sd)
        e.normalize = False  # compare raw features; normalisation stats would mix in the seams
    x = torch.rand(1, 1, 64, 64, 64)
    a, b = full(x), tiled(x)
    safe = torch.tensor(_blend_safe(64, 32, 0.25, halo=3))
    assert len(safe) >= 48  # includes blended overlaps (27, 28, 35..52)
    sub = (slice(None), slice(None), safe[:, None, None], safe[None, :, None], safe[None, None, :])
    assert (a[sub] - b[sub]).abs().max() < 1e-5
    assert (a - b).abs().max() > 1e-3  # the seams do differ, so the tiled path really ran


def test_tiling_close_for_default_layer(ext):
    """Index 59 sees (almost) the whole 64^3 volume, so tiles do change it (the seams are everywhere at
    this size; the exact test above shows the tiling itself is right). Measured on this random net,
    overlap 0.25, interior (8-voxel margin), unit-std features: tile 48: corr 0.934, mean |diff| 0.28,
    max 2.6; tile 32: corr 0.81, mean |diff| 0.47. An 8-voxel shift or an axis swap gives corr <= 0.1."""
    tiled = AnatomixExtractor(allow_random=True, tile_size=48, tile_overlap=0.25)
    tiled.unet.load_state_dict(ext.unet.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.interpolate(
        torch.rand(1, 1, 16, 16, 16, generator=g), size=(64,) * 3, mode="trilinear"
    )
    a, b = ext(x), tiled(x)
    assert a.shape == b.shape == (1, 16, 64, 64, 64)
    inner = (slice(None), slice(None), *(slice(8, 56),) * 3)
    ai, bi = a[inner].flatten(), b[inner].flatten()
    assert torch.corrcoef(torch.stack([ai, bi]))[0, 1] > 0.85
    assert (ai - bi).abs().mean() < 0.4
