"""MixStyle (Zhou et al. 2021): mix per-channel feature statistics between samples in the UNet encoder.

Why: the per-channel mean and standard deviation of early feature maps carry an image's "style"
(contrast, intensity profile). Swapping in convex combinations of two samples' statistics synthesises
new styles at the feature level, so the network learns to segment regardless of them.

As in the authors' ``MixStyle`` module: in training only, with probability ``mixstyle_prob`` per layer
and forward, ``x' = (x - mu) / sigma * sigma_mix + mu_mix`` with ``mu``, ``sigma`` the per-sample,
per-channel statistics over space (detached, eps 1e-6), ``mu_mix = lam * mu + (1 - lam) * mu[perm]``
(likewise ``sigma``), ``lam ~ Beta(alpha, alpha)`` per sample (alpha 0.1) and ``perm`` a random
permutation of the batch (no domain labels: the paper C.6 mixes random samples). It is applied, by
forward hooks (the UNet is not modified), to the output of the first ``mixstyle_levels`` encoder levels,
never the bottleneck: Zhou et al. insert it after the early residual stages (res1-3 of 4 for
classification, res1-2 for re-ID), where style lives; 3 of our 6 levels is our translation. The hooked
output feeds both the next level and the decoder skip. ``mixstyle_prob`` 0.5 is the authors' default
(paper: tuned on validation). Identity in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

from maskgen.methods.base import HParam, Method, register_method


def mixstyle(x: torch.Tensor, lam: torch.Tensor, perm: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Re-style each sample with ``lam``-mixtures (lam (B,)) of its own and ``perm``'s channel statistics."""
    dims = tuple(range(2, x.ndim))
    mu = x.mean(dims, keepdim=True).detach()
    sig = (x.var(dims, keepdim=True) + eps).sqrt().detach()
    lam = lam.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


class MixStyle(nn.Module):
    """Training-only, random MixStyle; the last draw is kept in ``last`` ((lam, perm), or None: not mixed)."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"MixStyle probability must be in [0, 1], got {p}")
        self.p, self.alpha, self.eps = p, alpha, eps
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = None
        if not self.training or x.shape[0] < 2 or torch.rand(()).item() >= self.p:
            return x
        alpha = torch.tensor(float(self.alpha))
        lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0],)).to(x.device)
        perm = torch.randperm(x.shape[0]).to(x.device)
        self.last = (lam, perm)
        return mixstyle(x, lam, perm, self.eps)

    def hook(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: re-style ``module``'s output (a bound method, so deep copies stay wired)."""
        return self(output)


@register_method("mixstyle")
class MixStyleMethod(Method):
    uses_features = False
    HPARAMS = {
        "mixstyle_prob": HParam(0.5, "probability of MixStyle at each hooked encoder level per forward "
                                     "(Zhou et al.: 0.5; paper: tuned)"),
        "mixstyle_alpha": HParam(0.1, "MixStyle mixing weight lam ~ Beta(alpha, alpha) (Zhou et al.: 0.1)"),
        "mixstyle_levels": HParam(3, "MixStyle after the first N encoder levels of the UNet (never the bottleneck)"),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        encoders = self.network.encoders
        n = min(int(self.hparams["mixstyle_levels"]), len(encoders) - 1)
        if n < 1:
            raise ValueError("MixStyle needs at least one encoder level above the bottleneck "
                             f"(mixstyle_levels={self.hparams['mixstyle_levels']}, {len(encoders)} levels)")
        self.mixers = nn.ModuleList(
            MixStyle(self.hparams["mixstyle_prob"], self.hparams["mixstyle_alpha"]) for _ in range(n)
        )
        for enc, mixer in zip(encoders, self.mixers):
            enc.register_forward_hook(mixer.hook)
