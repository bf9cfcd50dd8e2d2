"""RSC, Representation Self-Challenging (Huang et al. 2020): mute the most predictive deep features.

Why: a network that leans on a few dominant features (shortcuts) fails when they shift. RSC finds the
features whose gradient most raises the true-class score and mutes them for the training step, so the
remaining, less obvious evidence must also be learnt.

With probability ``rsc_prob`` per batch (paper: tuned on validation), as in the authors' code:
1. the image is encoded once; the deepest encoder block's features ``z`` (the bottleneck: high-level
   features, paper C.6) go through the decoder in a *probe* pass (eval mode, as the authors' code, so
   BatchNorm statistics are not updated twice) and the gradient ``g`` of the true-class logit summed over
   voxels is taken w.r.t. ``z``;
2. "spatial" RSC: ``g`` averaged over channels scores each position, and the top ``rsc_percent``
   (ceil) of positions of each sample are zeroed in every channel; "channel" RSC: ``g`` averaged over
   space scores each channel, and the top channels are zeroed. ``rsc_mode`` "both" draws one of the two
   per batch with probability 1/2 each (the authors' code);
3. the loss is the criterion on the decoder's output from the masked ``z`` (skips unchanged).

``rsc_percent`` 0.2 is the paper's setting (C.6: "the top 20 % of dominant gradients"; the authors' code
uses 1/3). Not ported: the authors' extra step that restores the mask for the samples whose confidence
drops least. Other batches, and inference, are plain ERM.
"""

from __future__ import annotations

import math

import torch

from maskgen.methods.base import HParam, Method, register_method

RSC_MODES = ("both", "spatial", "channel")


def rsc_mask(grad: torch.Tensor, percent: float, mode: str) -> torch.Tensor:
    """Keep-mask (1 keep, 0 mute) for features with gradient ``grad`` (B, C, *spatial): per sample, the top
    ``ceil(percent * n)`` positions (``mode`` "spatial", mask (B, 1, *spatial)) or channels ("channel",
    mask (B, C, 1, ...)) by mean gradient are muted."""
    if not 0.0 <= percent < 1.0:
        raise ValueError(f"RSC percent must be in [0, 1), got {percent}")
    b, c, *spatial = grad.shape
    if mode == "spatial":
        score, shape = grad.float().mean(1).flatten(1), (b, 1, *spatial)
    elif mode == "channel":
        score, shape = grad.float().flatten(2).mean(2), (b, c, *([1] * len(spatial)))
    else:
        raise ValueError(f"RSC mask mode must be 'spatial' or 'channel', got {mode!r}")
    keep = torch.ones_like(score)
    k = min(score.shape[1], math.ceil(percent * score.shape[1]))
    if k > 0:
        keep.scatter_(1, score.topk(k, dim=1).indices, 0.0)
    return keep.view(shape).to(grad.dtype)


@register_method("rsc")
class RSC(Method):
    uses_features = False
    DIAGNOSTICS = ('rsc_muted',)
    HPARAMS = {
        "rsc_prob": HParam(0.5, "probability of the RSC self-challenge on a training batch (paper: tuned)"),
        "rsc_percent": HParam(0.2, "RSC: fraction of deepest-encoder positions/channels muted (paper: 0.2)"),
        "rsc_mode": HParam("both", "RSC: mute positions, channels, or either at random per batch", RSC_MODES),
    }

    def challenge(self, x: torch.Tensor, target: torch.Tensor, mode: str | None = None):
        """The masked pass: (logits, keep-mask, gradient of the true-class logit w.r.t. the deepest features)."""
        net = self.network
        if mode is None:
            mode = self.hparams["rsc_mode"]
        if mode not in RSC_MODES:
            raise ValueError(f"rsc_mode must be one of {RSC_MODES}, got {mode!r}")
        if mode == "both":
            mode = "spatial" if torch.rand(()).item() < 0.5 else "channel"
        skips = net.encode(x)
        probe = skips[-1].detach().requires_grad_(True)
        was_training = net.training
        net.eval()
        try:
            with torch.enable_grad():
                logits = net.decode([s.detach() for s in skips[:-1]] + [probe])
                score = logits.gather(1, target.long()).sum()
                (grad,) = torch.autograd.grad(score, probe)
        finally:
            net.train(was_training)
        mask = rsc_mask(grad, self.hparams["rsc_percent"], mode)
        logits = net.decode(skips[:-1] + [skips[-1] * mask])
        return logits, mask, grad

    def training_loss(self, image, features, target, criterion):
        if torch.rand(()).item() >= self.hparams["rsc_prob"]:
            return super().training_loss(image, features, target, criterion)
        logits, mask, _ = self.challenge(self.compose(image, features), target)
        return criterion(logits, target), {"rsc_muted": float(1.0 - mask.float().mean())}
