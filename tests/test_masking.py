import pytest
import torch

from maskgen.methods import METHODS, build_method
from maskgen.methods.maskgen import view_mask


def _x(b=64, c=13):
    return torch.rand(b, c, 4, 4, 4) + 0.5  # strictly positive, so zeroed channels are exactly detectable


def test_rescale_mode_zeroes_whole_channels_and_scales_kept_ones():
    torch.manual_seed(0)
    x = _x()
    y = view_mask(x, 0.5, "rescale")
    per_channel_zero = (y == 0).flatten(2).all(-1)
    per_channel_any_zero = (y == 0).flatten(2).any(-1)
    assert torch.equal(per_channel_zero, per_channel_any_zero)  # masking is all-or-nothing per channel
    kept = ~per_channel_zero
    assert torch.allclose(y[kept], 2.0 * x[kept])  # kept channels scaled by 1/(1-p)


def test_zero_mode_keeps_values():
    torch.manual_seed(1)
    x = _x()
    y = view_mask(x, 0.25, "zero")
    kept = ~(y == 0).flatten(2).all(-1)
    assert torch.equal(y[kept], x[kept])


def test_each_channel_of_each_sample_masked_independently_at_rate_p():
    torch.manual_seed(2)
    x = _x(b=400, c=13)
    for p in (0.25, 0.5, 0.75):
        masked = (view_mask(x, p) == 0).flatten(2).all(-1).float()
        assert abs(masked.mean().item() - p) < 0.03
        # the image channel (0) is masked like any other
        assert abs(masked[:, 0].mean().item() - p) < 0.08
        # masks differ between samples
        assert not torch.equal(masked[0], masked[1]) or not torch.equal(masked[1], masked[2])


def test_p_zero_is_identity_and_bad_args_raise():
    x = _x(4)
    assert view_mask(x, 0.0) is x
    with pytest.raises(ValueError, match="mask rate"):
        view_mask(x, 1.0)
    with pytest.raises(ValueError, match="mask mode"):
        view_mask(x, 0.5, "half")


def _method(name, **hp):
    return build_method(name, image_channels=1, feature_channels=3, n_classes=2,
                        network=dict(base_width=2, n_poolings=1, convs_per_level=1), hparams=hp)


def test_masking_only_in_training_loss_not_at_inference():
    torch.manual_seed(3)
    m = _method("maskgen", mask_rate=0.5)
    seen = []
    m.network.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    img, feats = torch.rand(8, 1, 4, 4, 4) + 0.5, torch.rand(8, 3, 4, 4, 4) + 0.5
    target = torch.zeros(8, 1, 4, 4, 4, dtype=torch.long)
    m.train()
    m.training_loss(img, feats, target, lambda logits, t: logits.mean())
    train_in = seen[-1]
    assert (train_in == 0).flatten(2).all(-1).any()  # some channels masked
    m.eval()
    m(img, feats)
    assert torch.equal(seen[-1], torch.cat([img, feats], 1))  # nothing masked at inference


def test_erm_reads_image_only_and_maskgen_reads_both():
    assert not METHODS["erm"].uses_features
    assert _method("erm").in_channels == 1
    assert _method("maskgen").in_channels == 4
    with pytest.raises(ValueError, match="needs stable features"):
        _method("maskgen")(torch.rand(1, 1, 4, 4, 4), None)


def test_source_unit_masks_the_image_and_the_features_each_as_a_whole():
    torch.manual_seed(4)
    x = _x(b=2000, c=13)
    y = view_mask(x, 0.25, "rescale", groups=[1, 12])
    masked = (y == 0).flatten(2).all(-1)
    feats = masked[:, 1:]
    assert torch.equal(feats.all(1), feats.any(1))  # the 12 feature channels go together
    image_only = (~masked[:, 0] & feats[:, 0]).float().mean().item()
    features_only = (masked[:, 0] & ~feats[:, 0]).float().mean().item()
    assert abs(image_only - 0.1875) < 0.03 and abs(features_only - 0.1875) < 0.03  # p (1 - p) each
    assert abs((masked[:, 0] & feats[:, 0]).float().mean().item() - 0.0625) < 0.02  # both: p^2
    kept = ~masked
    assert torch.allclose(y[kept], x[kept] / 0.75)
    # per channel, the image-only view (every feature masked) almost never happens
    per_channel = (view_mask(x, 0.25) == 0).flatten(2).all(-1)
    assert (~per_channel[:, 0] & per_channel[:, 1:].all(1)).float().mean().item() < 0.005
    with pytest.raises(ValueError, match="do not add up"):
        view_mask(x, 0.25, groups=[1, 3])


def test_maskgen_source_unit_in_training():
    torch.manual_seed(5)
    m = _method("maskgen", mask_rate=0.5, mask_unit="source")
    seen = []
    m.network.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    img, feats = torch.rand(64, 1, 4, 4, 4) + 0.5, torch.rand(64, 3, 4, 4, 4) + 0.5
    m.training_loss(img, feats, torch.zeros(64, 1, 4, 4, 4, dtype=torch.long), lambda logits, t: logits.mean())
    masked = (seen[-1] == 0).flatten(2).all(-1)
    assert torch.equal(masked[:, 1:].all(1), masked[:, 1:].any(1)) and masked[:, 0].any() and masked[:, 1].any()
    with pytest.raises(ValueError):
        _method("maskgen", mask_unit="voxel")


def test_a_run_saved_before_a_hyper_parameter_existed_matches_its_default():
    from maskgen.runtime.config import TrainConfig

    saved = TrainConfig(dataset="d", out="o", method="maskgen", hparams={"mask_rate": 0.25, "mask_mode": "rescale"})
    same = TrainConfig(dataset="d", out="o", method="maskgen",
                       hparams={"mask_rate": 0.25, "mask_mode": "rescale", "mask_unit": "channel"})
    other = TrainConfig(dataset="d", out="o", method="maskgen",
                        hparams={"mask_rate": 0.25, "mask_mode": "rescale", "mask_unit": "source"})
    assert same.conflicts_with(saved) == []
    assert other.conflicts_with(saved) == ["mask_unit: None -> 'source'"]
