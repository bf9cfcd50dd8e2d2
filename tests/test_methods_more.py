"""GIN+IPA, DSBN, MixStyle, RSC and the extractor fine-tuning ablations: each one's distinctive behaviour."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import nn

from maskgen.extractors import build_extractor
from maskgen.extractors.anatomix import AnatomixExtractor
from maskgen.methods import METHODS, build_method
from maskgen.methods.dsbn import DualBatchNorm3d, bezier_augment, bezier_curve, dual_layers
from maskgen.methods.gin_ipa import blend, bspline_kernel, consistency_kl, ipa_blend_mask
from maskgen.methods.mixstyle import mixstyle
from maskgen.methods.rsc import rsc_mask
from maskgen.models import UNet
from maskgen.runtime.build import build_extractor_from_config, build_method_from_config
from maskgen.runtime.config import TrainConfig

torch.set_num_threads(1)

B, CLASSES, S = 2, 3, 8
NET = dict(base_width=2, n_poolings=1, convs_per_level=1, decoder_convs=1)


def _method(name, **hp):
    return build_method(name, image_channels=1, feature_channels=0, n_classes=CLASSES, network=NET, hparams=hp)


def _batch(b=B, size=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 1, size, size, size, generator=g) + 0.5
    target = torch.randint(0, CLASSES, (b, 1, size, size, size), generator=g)
    return image, target


def _criterion():
    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)


def _record_input(module):
    seen = []
    module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


# ------------------------------------------------------------------------------------------------ gin_ipa

def test_ipa_blend_mask_is_smooth_and_spans_unit_range():
    torch.manual_seed(0)
    k = bspline_kernel(4)
    assert k.numel() == 4 * 4 - 3 and torch.allclose(k.sum(), torch.tensor(1.0)) and torch.allclose(k, k.flip(0))
    mask = ipa_blend_mask((3, 1, 16, 16, 16), 0.25)
    assert mask.shape == (3, 1, 16, 16, 16)
    flat = mask.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(3)) and torch.allclose(flat.max(1).values, torch.ones(3))
    # smooth: neighbouring voxels differ far less than in a min-max scaled white-noise field
    noise = torch.rand(3, 1, 16, 16, 16)
    for d in (2, 3, 4):
        assert mask.diff(dim=d).abs().mean() < 0.25 * noise.diff(dim=d).abs().mean()
    assert not torch.allclose(mask, ipa_blend_mask((3, 1, 16, 16, 16), 0.25))  # random every call
    assert ipa_blend_mask((1, 1, 8, 12, 6), 1.0).shape == (1, 1, 8, 12, 6)
    with pytest.raises(ValueError, match="fraction"):
        ipa_blend_mask((1, 1, 8, 8, 8), 0.0)


def test_ipa_blend_lies_between_the_two_views():
    torch.manual_seed(0)
    a, b = torch.randn(2, 1, 16, 16, 16), torch.randn(2, 1, 16, 16, 16)
    mask = ipa_blend_mask(tuple(a.shape), 0.25)
    v1, v2 = blend(a, b, mask), blend(b, a, mask)
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    for v in (v1, v2):
        assert (v >= lo - 1e-6).all() and (v <= hi + 1e-6).all()
    assert torch.allclose(v1 + v2, a + b, atol=1e-6)  # complementary blends
    assert not torch.allclose(v1, a) and not torch.allclose(v1, b)


def test_consistency_kl_zero_for_identical_views_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, CLASSES, 4, 4, 4)
    assert consistency_kl([logits, logits.clone(), logits.clone()]).abs() < 1e-7
    assert consistency_kl([logits, logits + 5.0]).abs() < 1e-6  # same softmax
    views = [logits, torch.randn_like(logits), torch.randn_like(logits)]
    kl = consistency_kl(views)
    assert kl > 1e-3
    # the reference's nn.KLDivLoss() (mean over elements) of each view against the mean prediction
    mean = torch.stack([v.softmax(1) for v in views]).mean(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.stack([F.kl_div(v.log_softmax(1), mean, reduction="mean") for v in views]).mean()
    assert torch.allclose(kl, ref, atol=1e-6)


def test_gin_ipa_segments_three_views_with_consistency_term():
    torch.manual_seed(0)
    m = _method("gin_ipa", consistency_weight=10.0).train()
    assert m.hparams == {"consistency_weight": 10.0, "ipa_spacing": 0.25}
    scales = iter([2.0, 3.0, 7.0])
    m.gin.forward = lambda x: x * next(scales)  # known GIN views g1 = 2x, g2 = 3x, g3 = 7x
    image, target = _batch(size=16)
    seen = _record_input(m.network)
    seg_calls = []
    crit = _criterion()

    def recording(logits, t):
        seg_calls.append(logits.detach())
        return crit(logits, t)

    loss, logs = m.training_loss(image, None, target, recording)
    x = seen[-1]
    assert x.shape[0] == 3 * B  # effective batch x3
    v1, v2, v3 = x.split(B)
    assert (v1 >= 2 * image - 1e-5).all() and (v1 <= 3 * image + 1e-5).all()  # between the two GIN views
    assert torch.allclose(v1 + v2, 5 * image, atol=1e-5)  # the complementary blend
    assert not torch.allclose(v1, v2)
    assert torch.allclose(v3, 7 * image)  # the third, unblended view
    assert len(seg_calls) == 3  # every view is segmented
    seg = torch.stack([crit(lg, target) for lg in seg_calls]).mean()
    kl = consistency_kl(seg_calls)
    assert kl > 0 and logs["consistency_kl"] == pytest.approx(float(kl), rel=1e-4)
    assert float(loss.detach()) == pytest.approx(float(seg + 10.0 * kl), rel=1e-4)

    m.eval()
    with torch.no_grad():
        m(image)
    assert torch.equal(seen[-1], image)  # nothing augmented at inference


# ------------------------------------------------------------------------------------------------ dsbn

def test_bezier_curve_monotonic_in_the_right_direction():
    torch.manual_seed(0)
    rows = 8
    u = torch.linspace(0, 1, 501).expand(rows, -1)
    p1, p2 = torch.rand(rows, 2), torch.rand(rows, 2)
    p1[0], p2[0] = torch.tensor([0.9, 0.05]), torch.tensor([0.95, 0.1])  # a strongly non-linear curve
    decreasing = torch.tensor([False, True] * (rows // 2))
    out = bezier_curve(u, p1, p2, decreasing)
    d = out.diff(dim=1)
    assert (d[~decreasing] >= -1e-6).all() and (d[decreasing] <= 1e-6).all()
    assert torch.allclose(out[~decreasing, 0], torch.zeros(rows // 2), atol=1e-5)
    assert torch.allclose(out[~decreasing, -1], torch.ones(rows // 2), atol=1e-5)
    assert torch.allclose(out[decreasing, 0], torch.ones(rows // 2), atol=1e-5)
    assert torch.allclose(out[decreasing, -1], torch.zeros(rows // 2), atol=1e-5)
    assert (out[0] - u[0]).abs().max() > 0.2  # a real remapping, not the identity
    assert (out >= 0).all() and (out <= 1).all()


def test_bezier_augment_keeps_or_inverts_foreground_order_background_untouched():
    torch.manual_seed(0)
    image = torch.zeros(3, 1, 8, 8, 8)
    image[:, :, 2:6, 2:6, 2:6] = torch.rand(3, 1, 4, 4, 4) * 0.8 + 0.2  # foreground in [0.2, 1)
    apply = torch.tensor([True, True, False])
    decreasing = torch.tensor([False, True, False])
    out = bezier_augment(image, apply, decreasing, fg_threshold=0.05)
    fg = image[0, 0] > 0
    assert torch.equal(out[:, :, ~fg], image[:, :, ~fg])  # background kept (dark) in every sample
    assert torch.equal(out[2], image[2])  # not applied
    for i, sign in ((0, 1.0), (1, -1.0)):
        a, b = image[i, 0][fg], out[i, 0][fg]
        pairs = (a[:, None] - a[None, :]).sign() * (b[:, None] - b[None, :]).sign()
        assert (sign * pairs >= 0).all()  # order kept (increasing) or reversed (decreasing)
        assert b.min() >= image[i].min() - 1e-6 and b.max() <= image[i].max() + 1e-6  # the sample's range


def _branch_stats(m, k):
    return [torch.cat([d.bns[k].running_mean, d.bns[k].running_var]).clone() for d in dual_layers(m.network)]


@pytest.mark.parametrize("branch", [0, 1])
def test_dsbn_routes_a_batch_to_the_branch_its_curve_implies(branch):
    torch.manual_seed(0)
    m = _method("dsbn", dsbn_prob=1.0).train()
    layers = dual_layers(m.network)
    assert len(layers) == 3 and all(isinstance(d.bns[0], nn.BatchNorm3d) for d in layers)
    assert not any(isinstance(x, nn.BatchNorm3d) and not isinstance(p, nn.ModuleList)
                   for p in m.network.modules() for x in p.children())  # every BN is dual
    assert any(isinstance(x, nn.BatchNorm3d) for x in UNet(1, 2, **NET).modules())  # UNet itself unchanged
    m.draw = lambda b, device=None: (torch.ones(b, dtype=torch.bool), torch.full((b,), branch))
    image, target = _batch(b=3)
    before = [_branch_stats(m, k) for k in (0, 1)]
    m.training_loss(image, None, target, _criterion())
    after = [_branch_stats(m, k) for k in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(before[1 - branch], after[1 - branch]))  # other branch untouched
    assert all(not torch.equal(a, b) for a, b in zip(before[branch], after[branch]))
    assert all(d.branch == 0 for d in layers)  # routing reset afterwards


def test_dsbn_mixed_batch_split_by_direction_and_logits_back_in_order():
    torch.manual_seed(0)
    m = _method("dsbn", dsbn_prob=1.0).train()
    branch = torch.tensor([0, 1, 1, 0])
    m.draw = lambda b, device=None: (torch.ones(b, dtype=torch.bool), branch)
    first = dual_layers(m.network)[0]
    sizes = {0: [], 1: []}
    for k in (0, 1):
        first.bns[k].register_forward_pre_hook(lambda mod, a, k=k: sizes[k].append(a[0].shape[0]))
    outs = []
    m.network.register_forward_hook(lambda mod, a, o: outs.append(o.detach()))
    image, target = _batch(b=4)
    got = []
    m.training_loss(image, None, target, lambda lg, t: got.append(lg.detach()) or lg.mean())
    assert sizes == {0: [2], 1: [2]}  # one BatchNorm batch per branch
    logits = got[0]
    assert torch.equal(logits[0], outs[0][0]) and torch.equal(logits[3], outs[0][1])
    assert torch.equal(logits[1], outs[1][0]) and torch.equal(logits[2], outs[1][1])


def test_dsbn_inference_picks_the_branch_with_the_closest_statistics():
    torch.manual_seed(0)
    m = _method("dsbn")
    image, _ = _batch(b=2)
    image[1] = 3.0 - 2.5 * image[1]  # a very different intensity profile
    # calibrate branch k on sample k alone (momentum 1: running stats = that sample's statistics)
    m.train()
    for d in dual_layers(m.network):
        for bn in d.bns:
            bn.momentum = 1.0
    with torch.no_grad():
        for k in (0, 1):
            m.run_branch(image[k : k + 1], k)
    m.eval()
    with torch.no_grad():
        logits, choice = m.select_branch(image)
        assert choice.tolist() == [0, 1]
        assert torch.equal(logits[0], m.run_branch(image, 0)[0])
        assert torch.equal(logits[1], m.run_branch(image, 1)[1])
        assert torch.equal(m(image), logits)
        _, swapped = m.select_branch(image.flip(0))
        assert swapped.tolist() == [1, 0]  # per sample, not per batch
    assert all(not d.track_distance and d.branch == 0 for d in dual_layers(m.network))
    assert isinstance(dual_layers(m.network)[0], DualBatchNorm3d)


# ------------------------------------------------------------------------------------------------ mixstyle

def test_mixstyle_output_statistics_are_mixtures():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 6, 6, 6) * torch.tensor([0.5, 1.0, 3.0, 2.0]).view(4, 1, 1, 1, 1)
    x = x + torch.tensor([0.0, 5.0, -2.0, 1.0]).view(4, 1, 1, 1, 1)
    lam, perm = torch.tensor([0.1, 0.5, 0.9, 1.0]), torch.tensor([2, 0, 3, 1])
    out = mixstyle(x, lam, perm)
    dims = (2, 3, 4)
    mu, sig = x.mean(dims), x.std(dims)
    lam_ = lam.view(4, 1)
    assert torch.allclose(out.mean(dims), lam_ * mu + (1 - lam_) * mu[perm], atol=1e-5)
    assert torch.allclose(out.std(dims), lam_ * sig + (1 - lam_) * sig[perm], atol=1e-4)
    normed = (x - mu[..., None, None, None]) / sig[..., None, None, None]
    out_normed = (out - out.mean(dims, keepdim=True)) / out.std(dims, keepdim=True)
    assert torch.allclose(normed, out_normed, atol=1e-4)  # content kept, only the style changes
    assert torch.allclose(out[3], x[3], atol=1e-5)  # lam = 1: own style


def test_mixstyle_method_restyles_early_encoder_levels_in_training_only():
    torch.manual_seed(0)
    m = _method("mixstyle", mixstyle_prob=1.0)
    assert len(m.mixers) == 1  # 2 levels: only the first, never the bottleneck
    deep = build_method("mixstyle", image_channels=1, feature_channels=0, n_classes=2,
                        network=dict(base_width=2, n_poolings=5, convs_per_level=1, decoder_convs=1))
    assert len(deep.mixers) == 3 and deep.hparams["mixstyle_alpha"] == 0.1  # default: first 3 of 6 levels
    assert m.state_dict().keys() == _method("erm").state_dict().keys()  # no parameters added
    enc = m.network.encoders[0]
    pre, post = [], []
    enc[-1].register_forward_hook(lambda mod, a, o: pre.append(o.detach().clone()))
    enc.register_forward_hook(lambda mod, a, o: post.append(o.detach().clone()))  # runs after the MixStyle hook
    image, target = _batch(b=4)
    m.train()
    m.training_loss(image, None, target, _criterion())
    lam, perm = m.mixers[0].last
    assert torch.allclose(post[-1], mixstyle(pre[-1], lam, perm), atol=1e-5)
    assert not torch.allclose(post[-1], pre[-1])
    m.eval()
    with torch.no_grad():
        m(image)
    assert torch.equal(post[-1], pre[-1]) and m.mixers[0].last is None  # identity in eval mode
    m0 = _method("mixstyle", mixstyle_prob=0.0).train()
    pre0, post0 = [], []
    m0.network.encoders[0][-1].register_forward_hook(lambda mod, a, o: pre0.append(o.detach().clone()))
    m0.network.encoders[0].register_forward_hook(lambda mod, a, o: post0.append(o.detach().clone()))
    m0.training_loss(image, None, target, _criterion())
    assert torch.equal(post0[-1], pre0[-1])


# ------------------------------------------------------------------------------------------------ rsc

def test_rsc_mask_zeroes_exactly_the_largest_gradients():
    torch.manual_seed(0)
    grad = torch.randn(2, 4, 5, 5, 5)
    keep = rsc_mask(grad, 0.2, "spatial")
    assert keep.shape == (2, 1, 5, 5, 5)
    score = grad.mean(1).flatten(1)
    for i in range(2):
        muted = keep[i].flatten() == 0
        assert int(muted.sum()) == math.ceil(0.2 * 125)  # 25 of 125 positions: 20 %
        assert score[i][muted].min() > score[i][~muted].max()  # exactly the largest ones
    grad = torch.randn(2, 10, 3, 3, 3)
    keep = rsc_mask(grad, 0.2, "channel")
    assert keep.shape == (2, 10, 1, 1, 1)
    cscore = grad.flatten(2).mean(2)
    for i in range(2):
        muted = keep[i].flatten() == 0
        assert int(muted.sum()) == 2
        assert set(muted.nonzero().flatten().tolist()) == set(cscore[i].topk(2).indices.tolist())
    assert (rsc_mask(grad, 0.0, "spatial") == 1).all()
    with pytest.raises(ValueError):
        rsc_mask(grad, 0.2, "random")


def test_rsc_masks_deepest_features_by_the_true_class_gradient():
    torch.manual_seed(0)
    m = _method("rsc", rsc_prob=1.0, rsc_mode="spatial").train()
    net = m.network
    image, target = _batch(b=2, size=16)
    ref_net = copy.deepcopy(net)  # the network as the probe pass sees it
    calls = []
    decode = net.decode
    net.decode = lambda skips: calls.append([s.detach().clone() for s in skips]) or decode(skips)
    dec_bn = net.decoders[0][0][1]
    tracked = int(dec_bn.num_batches_tracked)
    logits, keep, grad = m.challenge(image, target)
    assert len(calls) == 2 and int(dec_bn.num_batches_tracked) == tracked + 1  # the probe pass is in eval mode
    probe_deep, masked_deep = calls[0][-1], calls[1][-1]
    assert torch.allclose(masked_deep, probe_deep * keep)
    assert all(torch.equal(a, b) for a, b in zip(calls[0][:-1], calls[1][:-1]))  # skips unchanged
    # the gradient is that of the summed true-class logit w.r.t. the deepest encoder features
    z = probe_deep.clone().requires_grad_(True)
    out = ref_net.eval().decode(calls[0][:-1] + [z])
    (ref,) = torch.autograd.grad(out.gather(1, target).sum(), z)
    assert torch.allclose(grad, ref, atol=1e-5)
    score = ref.mean(1).flatten(1)
    n = score.shape[1]  # 8^3 positions at the bottleneck
    for i in range(2):
        muted = keep[i].flatten() == 0
        assert int(muted.sum()) == math.ceil(0.2 * n)
        assert score[i][muted].min() > score[i][~muted].max()
    # the loss is taken on the masked pass
    loss, logs = m.training_loss(image, None, target, _criterion())
    assert logs["rsc_muted"] == pytest.approx(math.ceil(0.2 * n) / n)
    loss.backward()
    assert net.encoders[0][0][0].weight.grad.abs().sum() > 0
    calls.clear()
    _, logs0 = _method("rsc", rsc_prob=0.0).training_loss(image, None, target, _criterion())
    assert logs0 == {}


# ------------------------------------------------------------------------------------------------ finetune

@pytest.fixture(scope="module")
def anatomix():
    torch.manual_seed(0)
    return AnatomixExtractor(allow_random=True)  # the real architecture, random weights


def _ft(name, ext=None):
    m = build_method(name, image_channels=1, feature_channels=0, n_classes=CLASSES)
    if ext is not None:
        m.attach_extractor(ext)
    return m


@pytest.mark.parametrize("name", ["finetune_decoder", "finetune_extractor"])
def test_finetune_needs_a_network_extractor(name):
    cls = METHODS[name]
    assert cls.needs_extractor and not cls.uses_features
    m = _ft(name)
    with pytest.raises(ValueError, match="network extractor such as anatomix"):
        m(torch.rand(1, 1, 32, 32, 32))
    for ext in (None, build_extractor("mind"), build_extractor("none")):
        with pytest.raises(ValueError, match="needs a network extractor such as anatomix"):
            m.attach_extractor(ext)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _layer(key):
    """'network.unet.model.12.weight' -> 12; head -> None."""
    parts = key.split(".")
    return int(parts[3]) if parts[1] == "unet" else None


@pytest.mark.parametrize("name", ["finetune_decoder", "finetune_extractor"])
def test_finetune_changes_only_the_intended_parameters(name, anatomix):
    torch.manual_seed(1)
    ext_before = _snapshot(anatomix)
    m = _ft(name, anatomix)
    assert m.size_multiple == 16 and m.network.layer == 59
    first_up = anatomix.unet.upsample_indices[0]  # 37: everything before is the encoder
    image, target = _batch(b=1, size=32)
    m.train()
    before = _snapshot(m)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=1e-5)  # the trainer's optimizer
    loss, _ = m.training_loss(image, None, target, _criterion())
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = _snapshot(m)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for k in before:
        i = _layer(k)
        if i is None:  # the segmentation head always trains
            expect = True
        elif i > 59:  # after the feature layer: unused
            expect = False
        elif i < first_up:
            expect = name == "finetune_extractor"
        else:
            expect = True
        if k.endswith("num_batches_tracked") or (".running_" in k):
            # BatchNorm statistics: updated where the layer is in train mode
            assert (k in changed) == expect, k
        else:
            assert k.endswith(("weight", "bias")), k
            assert (k in changed) == expect, k
    assert all(torch.equal(v, ext_before[k]) for k, v in anatomix.state_dict().items())  # extractor untouched
    assert not any(p.requires_grad for p in anatomix.parameters())
    # inference: the image only, features ignored, sizes checked
    m.eval()
    with torch.no_grad():
        out = m(image)
        assert out.shape == (1, CLASSES, 32, 32, 32)
        assert torch.equal(m(image, torch.randn(1, 16, 32, 32, 32)), out)
    with pytest.raises(ValueError, match="divisible by 16"):
        m(torch.rand(1, 1, 40, 32, 32))


def test_finetune_checkpoint_holds_the_finetuned_network_for_predict(anatomix, tmp_path):
    weights = tmp_path / "anatomix.pth"
    torch.save(anatomix.unet.state_dict(), weights)
    cfg = TrainConfig(dataset="unused", out=str(tmp_path / "run"), method="finetune_decoder", extractor="anatomix",
                      extractor_weights=str(weights), n_classes=CLASSES)
    assert build_extractor_from_config(cfg) is not None  # built although its features are not read
    assert build_extractor_from_config(TrainConfig(dataset="x", out="y", method="erm")) is None
    torch.manual_seed(2)
    trained = build_method_from_config(cfg, anatomix)  # as the trainer: its own extractor
    trained.train()
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-2)
    image, target = _batch(b=1, size=32)
    loss, _ = trained.training_loss(image, None, target, _criterion())
    loss.backward()
    opt.step()
    sd = trained.state_dict()
    assert "network.unet.model.38.weight" in sd and "network.head.weight" in sd
    assert not torch.equal(sd["network.unet.model.38.weight"], anatomix.unet.state_dict()["model.38.weight"])
    # as the predictor: build from the config (extractor built from its weights file), then load
    fresh = build_method_from_config(cfg)
    fresh.load_state_dict(sd)  # strict: same keys
    trained.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(image), trained(image))
