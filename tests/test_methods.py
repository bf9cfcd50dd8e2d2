"""The baseline and ablation methods: each one's distinctive behaviour, plus a contract test for all."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from maskgen.cli import build_parser
from maskgen.methods import METHODS, build_method
from maskgen.methods.cutout import cutout, cutout_mask
from maskgen.methods.gin import GINGroupConv3D
from maskgen.methods.mixup import mix
from maskgen.models.unet import ConvBNReLU

B, FEATS, CLASSES, S = 2, 3, 3, 8
NET = dict(base_width=2, n_poolings=1, convs_per_level=1, decoder_convs=1)


def _method(name, **hp):
    return build_method(name, image_channels=1, feature_channels=FEATS, n_classes=CLASSES, network=NET, hparams=hp)


def _batch(b=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 1, S, S, S, generator=g) + 0.5
    feats = torch.randn(b, FEATS, S, S, S, generator=g)
    target = torch.randint(0, CLASSES, (b, 1, S, S, S), generator=g)
    return image, feats, target


def _criterion():
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)


def _record_input(method):
    """Record what the method's network receives."""
    seen = []
    method.network.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


# ------------------------------------------------------------------------------------------------ all methods

@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_and_predicts(name):
    torch.manual_seed(0)
    cls = METHODS[name]
    if cls.needs_extractor:
        pytest.skip("trains the extractor's own network; contract in test_methods_more.py")
    always = {k: 1.0 for k in cls.HPARAMS if k.endswith("_prob")}  # exercise the augmentation path
    m = _method(name, **always)
    image, feats, target = _batch()
    feats = feats if cls.uses_features else None
    m.train()
    loss, logs = m.training_loss(image, feats, target, _criterion())
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert isinstance(logs, dict)
    assert set(logs) <= set(cls.DIAGNOSTICS), f"{name} returns undeclared diagnostics {set(logs) - set(cls.DIAGNOSTICS)}"
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    m.eval()
    with torch.no_grad():
        out = m(image, feats)
    assert out.shape == (B, CLASSES, S, S, S)
    assert m.size_multiple == 2


def test_train_help_lists_every_method_and_its_flags():
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for name, cls in METHODS.items():
        assert name in help_text
        for key in cls.HPARAMS:
            assert f"--{key.replace('_', '-')}" in help_text
    flat = " ".join(help_text.split())
    assert "--image-norm {none,instance} [concat, maskgen]" in flat  # a shared flag names every method using it


# ------------------------------------------------------------------------------------------------ reps_only

def test_reps_only_reads_features_alone():
    m = _method("reps_only").eval()
    assert METHODS["reps_only"].uses_features
    assert m.in_channels == FEATS and m.network.in_channels == FEATS
    image, feats, _ = _batch()
    seen = _record_input(m)
    with torch.no_grad():
        a = m(image, feats)
        b = m(torch.rand_like(image), feats)
    assert torch.equal(a, b)  # the image is ignored
    assert torch.equal(seen[0], feats)
    with pytest.raises(ValueError, match="needs stable features"):
        m(image, None)
    with pytest.raises(ValueError, match="feature channel"):
        build_method("reps_only", image_channels=1, feature_channels=0, n_classes=2, network=NET)


# ------------------------------------------------------------------------------------------------ concat

def test_concat_feeds_image_and_features_unmasked_in_training():
    torch.manual_seed(0)
    m = _method("concat").train()
    assert m.in_channels == 1 + FEATS and set(METHODS["concat"].HPARAMS) == {"image_norm"}
    image, feats, target = _batch(b=4)
    seen = _record_input(m)
    for _ in range(3):
        m.training_loss(image, feats, target, _criterion())
        assert torch.equal(seen[-1], torch.cat([image, feats], 1))


@pytest.mark.parametrize("name", ["concat", "maskgen"])
def test_image_norm_instance_puts_the_image_on_the_features_scale_in_training_and_inference(name):
    image, feats, target = _batch(b=3)
    image = 0.3 + 0.2 * (image - 0.5)  # std 0.06, as inside the texture phantom: far below the features' 1
    plain, normed = _method(name), _method(name, image_norm="instance")
    assert torch.equal(plain.compose(image, feats)[:, :1], image)  # the default is the paper's input
    x = normed.compose(image, feats)
    assert torch.equal(x[:, 1:], feats)
    per_sample = x[:, 0].flatten(1)
    assert torch.allclose(per_sample.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_sample.std(1, correction=0), torch.ones(3), atol=1e-2)
    assert torch.equal(normed.compose(torch.zeros_like(image), feats)[:, 0], torch.zeros_like(image[:, 0]))
    seen = _record_input(normed.train())
    normed.training_loss(image, feats, target, _criterion())
    kept = seen[-1][:, 0].flatten(1).abs().sum(1) > 0  # MaskGen may mask the image of some samples
    assert kept.any()
    scale = 1 / (1 - normed.hparams.get("mask_rate", 0.0))  # MaskGen rescales the kept channels
    assert torch.allclose(seen[-1][kept, 0].flatten(1).std(1, correction=0), torch.tensor(scale), atol=2e-2 * scale)
    with pytest.raises(ValueError, match="image_norm must be one of none, instance"):
        _method(name, image_norm="minmax")


# ------------------------------------------------------------------------------------------------ channel_dropout

def test_channel_dropout_after_every_block_in_training_only():
    torch.manual_seed(0)
    m = _method("channel_dropout", dropout_rate=0.5)
    assert m.in_channels == 1
    blocks = [b for b in m.network.modules() if isinstance(b, ConvBNReLU)]
    assert len(blocks) == 3  # 2 encoder levels + 1 decoder level, one conv each
    for b in blocks:
        assert isinstance(b[-1], nn.Dropout3d) and b[-1].p == 0.5 and isinstance(b[-2], nn.ReLU)
    # no parameters added: the state dict matches the plain UNet's
    assert m.state_dict().keys() == _method("erm").state_dict().keys()

    relu_out, block_out = [], []
    blocks[1][-2].register_forward_hook(lambda mod, a, o: relu_out.append(o.detach().clone()))
    blocks[1].register_forward_hook(lambda mod, a, o: block_out.append(o.detach().clone()))
    image = torch.rand(8, 1, S, S, S)
    m.train()
    m(image)
    pre, post = relu_out[-1], block_out[-1]
    dropped = (post == 0).flatten(2).all(-1) & (pre != 0).flatten(2).any(-1)
    assert dropped.any()  # whole channels zeroed
    kept = ~(post == 0).flatten(2).all(-1)
    assert torch.allclose(post[kept], 2.0 * pre[kept])  # the rest scaled by 1/(1-p)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(image), m(image))  # no dropout at inference
    with pytest.raises(ValueError, match="dropout rate"):
        _method("channel_dropout", dropout_rate=1.0)


# ------------------------------------------------------------------------------------------------ mixup

def test_mixup_mixes_images_and_mixes_the_losses():
    torch.manual_seed(0)
    m = _method("mixup", mixup_prob=1.0).train()
    image, _, _ = _batch(b=3)
    target = torch.arange(3).view(3, 1, 1, 1, 1).expand(3, 1, S, S, S).clone()  # sample i is all label i
    seen = _record_input(m)
    calls = []
    crit = _criterion()

    def recording(logits, t):
        calls.append((logits.detach(), t.clone()))
        return crit(logits, t)

    loss, logs = m.training_loss(image, None, target, recording)
    lam = logs["mixup_lam"]
    assert 0.0 <= lam <= 1.0 and len(calls) == 2
    assert torch.equal(calls[0][1], target)
    perm = calls[1][1][:, 0, 0, 0, 0]  # the partner of each sample, read off its constant label
    assert sorted(perm.tolist()) == [0, 1, 2]
    assert torch.allclose(seen[-1], lam * image + (1 - lam) * image[perm])  # convex combination
    logits = calls[0][0]
    expected = lam * crit(logits, target) + (1 - lam) * crit(logits, target[perm])
    assert torch.allclose(loss, expected)


def test_mixup_cross_entropy_part_equals_soft_label_cross_entropy():
    torch.manual_seed(1)
    m = _method("mixup", mixup_prob=1.0).train()
    image, _, target = _batch(b=4)
    seen_logits = []

    def ce(logits, t):
        seen_logits.append(logits)
        return F.cross_entropy(logits, t[:, 0])

    loss, logs = m.training_loss(image, None, target, ce)
    lam = logs["mixup_lam"]
    # soft target lam * onehot(y) + (1 - lam) * onehot(y[perm]), for the (unknown) permutation drawn
    logp = F.log_softmax(seen_logits[0], 1)
    onehot = F.one_hot(target[:, 0], CLASSES).movedim(-1, 1).float()
    candidates = [-(lam * onehot + (1 - lam) * onehot[list(p)]).mul(logp).sum(1).mean()
                  for p in itertools.permutations(range(4))]
    assert any(torch.allclose(loss, c) for c in candidates)


def test_mixup_off_and_mix_helper():
    m = _method("mixup", mixup_prob=0.0).train()
    image, _, target = _batch()
    seen = _record_input(m)
    _, logs = m.training_loss(image, None, target, _criterion())
    assert torch.equal(seen[-1], image) and logs == {}
    x = torch.arange(3.0).view(3, 1)
    assert torch.allclose(mix(x, 0.25, torch.tensor([2, 0, 1])), torch.tensor([[1.5], [0.25], [1.25]]))


# ------------------------------------------------------------------------------------------------ cutout

def test_cutout_grey_cube_in_image_background_in_label():
    torch.manual_seed(0)
    image = torch.rand(3, 2, 8, 12, 16)
    target = torch.randint(1, 3, (3, 1, 8, 12, 16))
    mask = cutout_mask(tuple(image.shape), prob=1.0, size=0.25)
    out, lab = cutout(image, target, mask)
    for i in range(3):
        idx = mask[i, 0].nonzero()
        assert len(idx) == 2 * 3 * 4  # one cube, side 0.25 of each dim
        lo, hi = idx.min(0).values, idx.max(0).values
        assert (hi - lo + 1).tolist() == [2, 3, 4]
        inside = mask[i, 0]
        for c in range(2):
            grey = out[i, c][inside]
            assert torch.allclose(grey, image[i, c].mean().expand_as(grey))  # constant: the sample's mean
            assert torch.equal(out[i, c][~inside], image[i, c][~inside])  # outside unchanged
        assert (lab[i, 0][inside] == 0).all()
        assert torch.equal(lab[i, 0][~inside], target[i, 0][~inside])
    assert not cutout_mask(tuple(image.shape), prob=0.0, size=0.25).any()


def test_cutout_in_training_not_at_inference():
    torch.manual_seed(0)
    m = _method("cutout", cutout_prob=1.0, cutout_size=0.5)
    image, _, target = _batch()
    seen, targets = _record_input(m), []
    m.train()
    m.training_loss(image, None, target, lambda lg, t: targets.append(t) or lg.mean())
    assert (seen[-1] != image).flatten(1).any(1).all()  # every sample cut
    assert ((targets[-1] == 0).sum() > (target == 0).sum())
    m.eval()
    with torch.no_grad():
        m(image)
    assert torch.equal(seen[-1], image)


# ------------------------------------------------------------------------------------------------ gin

def test_gin_module_redraws_keeps_shape_and_norm_and_has_no_grad():
    torch.manual_seed(0)
    gin = GINGroupConv3D()
    assert list(gin.parameters()) == []
    x = (torch.rand(3, 1, S, S, S) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1, 1, 1)).requires_grad_()
    a, b = gin(x), gin(x)
    assert a.shape == x.shape
    assert not torch.allclose(a, b)  # a new random network every call
    assert not torch.allclose(a, x)
    assert not a.requires_grad
    ref = x.detach().flatten(1).norm(dim=1)
    for y in (a, b):
        assert torch.allclose(y.flatten(1).norm(dim=1), ref, rtol=1e-4)
    multi = torch.rand(2, 3, 4, 4, 4)
    assert gin(multi).shape == multi.shape


def test_gin_method_augments_in_training_only():
    torch.manual_seed(0)
    m = _method("gin")
    image, _, target = _batch()
    seen = _record_input(m)
    m.train()
    m.training_loss(image, None, target, _criterion())
    assert not torch.allclose(seen[-1], image)
    assert torch.allclose(seen[-1].flatten(1).norm(dim=1), image.flatten(1).norm(dim=1), rtol=1e-4)
    m.eval()
    with torch.no_grad():
        m(image)
    assert torch.equal(seen[-1], image)
    m0 = _method("gin", gin_prob=0.0).train()
    seen0 = _record_input(m0)
    m0.training_loss(image, None, target, _criterion())
    assert torch.equal(seen0[-1], image)


# ------------------------------------------------------------------------------------------------ se_fusion

def test_se_fusion_gates_the_concatenated_channels():
    torch.manual_seed(0)
    m = _method("se_fusion").eval()
    se = m.network.se
    assert se.mlp[0].in_features == 1 + FEATS and se.mlp[0].out_features == (1 + FEATS) // 2
    image, feats, _ = _batch()
    x = torch.cat([image, feats], 1)
    with torch.no_grad():
        gate = se.gate(x)
        assert gate.shape == (B, 1 + FEATS)
        assert ((gate > 0) & (gate < 1)).all()
        assert torch.allclose(se(x), x * gate[:, :, None, None, None])
        seen = []
        m.network.unet.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
        m(image, feats)
    assert torch.allclose(seen[-1], x * gate[:, :, None, None, None])  # the UNet sees the gated input
    # the gate is trained end to end
    m.train()
    loss, _ = m.training_loss(image, feats, torch.randint(0, CLASSES, (B, 1, S, S, S)), _criterion())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in se.parameters())
