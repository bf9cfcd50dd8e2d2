"""DSBN: dual BatchNorm for "source-similar" and "source-dissimilar" styles (Zhou et al. 2022, dual normalization).

Why: a network whose every BatchNorm has two branches, one fed with images whose intensity order is kept
and one with images whose order is inverted, learns shared convolutions under two sets of normalisation
statistics; at test time the sample is normalised by whichever branch's statistics it resembles, so an
unseen contrast (e.g. T2 after training on T1) can still be normalised sensibly.

- Style augmentation (Zhou et al.'s Bezier curves, as in their ``bezier_curve.py``): with probability
  ``dsbn_prob`` per sample, the foreground intensities (each sample min-max scaled to [0, 1]; foreground =
  above ``dsbn_fg_threshold`` of that range, the rest stays as it is, so the background stays dark) are
  remapped by a random cubic Bezier curve from (0, 0) to (1, 1) with control points uniform in the unit
  square, which is monotonically increasing; with probability 1/2 it is mirrored (``1 - curve``),
  monotonically decreasing. The paper has no domain labels, so (paper C.6) the "domain" is the curve's
  direction: increasing (or no curve) -> branch 0, decreasing -> branch 1. Each branch's samples form
  their own BatchNorm batch (conv weights shared), and one loss is taken on the whole batch.
- Dual BatchNorm without touching ``UNet``: every ``nn.BatchNorm3d`` of a built UNet is swapped for a
  ``DualBatchNorm3d`` holding two BatchNorms (each with its own affine and running statistics).
- Inference: per sample, as the authors' test code: the sample is run through each branch and the
  branch whose running statistics (summed over every BatchNorm layer: L2 distance of the per-channel means
  plus L2 distance of the variances) are closest to the sample's own per-channel statistics at those
  layers wins. We choose per sample (a sliding window) and in eval mode, where the authors used BatchNorm
  with momentum 1 on a test batch of slices. Costs two forward passes. A plain ``forward`` in training
  mode uses branch 0.

``dsbn_prob`` default 0.5 (paper: tuned on validation from {0.25, 0.5, 0.75}); the foreground threshold
0.05 is our choice (the reference only keeps the exact background value dark).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from maskgen.methods.base import HParam, Method, register_method
from maskgen.models import UNet

BEZIER_SAMPLES = 1001


class DualBatchNorm3d(nn.Module):
    """Two BatchNorm3d branches; ``branch`` picks the one used. With ``track_distance`` on, each call stores
    the per-sample distance between the input's instance statistics and the used branch's running ones."""

    def __init__(self, bn: nn.BatchNorm3d):
        super().__init__()
        self.bns = nn.ModuleList([copy.deepcopy(bn), copy.deepcopy(bn)])
        self.branch = 0
        self.track_distance = False
        self.last_distance: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bns[self.branch]
        if self.track_distance:
            with torch.no_grad():
                dims = tuple(range(2, x.ndim))
                xf = x.float()
                mean, var = xf.mean(dims), xf.var(dims, unbiased=False)
                self.last_distance = (mean - bn.running_mean).norm(dim=1) + (var - bn.running_var).norm(dim=1)
        return bn(x)


def dual_batchnorm(net: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm3d`` of ``net`` in place by a ``DualBatchNorm3d`` (both branches start as
    copies of it); returns ``net``."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm3d):
                setattr(parent, name, DualBatchNorm3d(child))
    return net


def dual_layers(net: nn.Module) -> list[DualBatchNorm3d]:
    return [m for m in net.modules() if isinstance(m, DualBatchNorm3d)]


def set_branch(net: nn.Module, branch: int) -> None:
    for m in dual_layers(net):
        m.branch = branch


def _interp(u: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Row-wise piecewise-linear interpolation: ``u`` (B, N) on the curves ``xs``, ``ys`` (B, T), xs sorted."""
    t = xs.shape[1]
    idx = torch.searchsorted(xs.contiguous(), u.contiguous()).clamp(1, t - 1)
    x0, x1 = xs.gather(1, idx - 1), xs.gather(1, idx)
    y0, y1 = ys.gather(1, idx - 1), ys.gather(1, idx)
    w = ((u - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


def bezier_curve(u: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, decreasing: torch.Tensor) -> torch.Tensor:
    """Apply per row b the cubic Bezier curve (0,0), p1[b], p2[b], (1,1) (points in the unit square, so x(t)
    and y(t) never decrease and the curve is a monotonic map of [0, 1] onto [0, 1]) to ``u`` (B, N) in
    [0, 1]; rows with ``decreasing`` get the mirrored curve ``1 - curve``."""
    t = torch.linspace(0.0, 1.0, BEZIER_SAMPLES, device=u.device, dtype=torch.float32)[None]
    b1, b2, b3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3

    def coord(i: int) -> torch.Tensor:
        return b1 * p1[:, i : i + 1] + b2 * p2[:, i : i + 1] + b3

    xs = torch.cummax(coord(0), dim=1).values  # monotone in exact arithmetic; guard against rounding
    ys = torch.cummax(coord(1), dim=1).values
    out = _interp(u.float().clamp(0.0, 1.0), xs, ys)
    return torch.where(decreasing.view(-1, 1), 1.0 - out, out).to(u.dtype)


def bezier_augment(image: torch.Tensor, apply: torch.Tensor, decreasing: torch.Tensor,
                   fg_threshold: float = 0.05) -> torch.Tensor:
    """Random Bezier intensity curve on the foreground of the samples where ``apply`` (bool, (B,)); increasing
    or, where ``decreasing``, decreasing. Intensities are min-max scaled per sample and channel for the
    curve and mapped back to the sample's range; voxels at or below ``fg_threshold`` of it are kept."""
    b = image.shape[0]
    flat = image.flatten(2)  # (B, C, N)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    u = (flat - lo) / (hi - lo).clamp_min(1e-8)
    p1, p2 = torch.rand(b, 2, device=image.device), torch.rand(b, 2, device=image.device)
    curved = bezier_curve(u.reshape(b, -1), p1, p2, decreasing).view_as(u)
    curved = curved * (hi - lo) + lo
    keep = ~apply.view(b, 1, 1) | (u <= fg_threshold)
    out = torch.where(keep, flat, curved)
    return out.view_as(image)


@register_method("dsbn")
class DSBN(Method):
    uses_features = False
    DIAGNOSTICS = ('dsbn_branch1',)
    HPARAMS = {
        "dsbn_prob": HParam(0.5, "probability of a random Bezier intensity curve on each training sample "
                                 "(DSBN; paper: tuned)"),
        "dsbn_fg_threshold": HParam(0.05, "DSBN: voxels above this fraction of the sample's intensity range are "
                                          "foreground and get the curve"),
    }

    def build_network(self) -> nn.Module:
        return dual_batchnorm(UNet(self.in_channels, self.n_classes, **self.network_kwargs))

    def draw(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: apply a curve? and its branch (1 = decreasing curve, 0 = increasing or none)."""
        apply = torch.rand(batch, device=device) < self.hparams["dsbn_prob"]
        decreasing = apply & (torch.rand(batch, device=device) < 0.5)
        return apply, decreasing.long()

    def run_branch(self, x: torch.Tensor, branch: int) -> torch.Tensor:
        set_branch(self.network, branch)
        try:
            return self.network(x)
        finally:
            set_branch(self.network, 0)

    def training_loss(self, image, features, target, criterion):
        apply, branch = self.draw(image.shape[0], image.device)
        x = self.compose(bezier_augment(image, apply, branch.bool(), self.hparams["dsbn_fg_threshold"]), features)
        order, outs = [], []
        for k in (0, 1):
            idx = (branch == k).nonzero().flatten()
            if idx.numel():
                order.append(idx)
                outs.append(self.run_branch(x[idx], k))
        logits = torch.cat(outs)[torch.argsort(torch.cat(order))]  # back to batch order
        return criterion(logits, target), {"dsbn_branch1": float(branch.float().mean())}

    def select_branch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of each sample through its closest branch, and that branch (B,); eval mode."""
        layers = dual_layers(self.network)
        logits, dists = [], []
        try:
            for m in layers:
                m.track_distance = True
            for k in (0, 1):
                logits.append(self.run_branch(x, k))
                dists.append(sum(m.last_distance for m in layers))
        finally:
            for m in layers:
                m.track_distance, m.last_distance = False, None
        choice = torch.stack(dists, 1).argmin(1)
        pick = choice.view(-1, *([1] * (x.ndim - 1))).bool()
        return torch.where(pick, logits[1], logits[0]), choice

    def forward(self, image, features=None):
        x = self.compose(image, features)
        if self.training:
            return self.run_branch(x, 0)
        return self.select_branch(x)[0]
