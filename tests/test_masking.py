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
