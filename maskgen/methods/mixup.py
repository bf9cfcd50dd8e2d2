"""MixUp (Zhang et al. 2017): train on convex combinations of pairs of samples in the batch.

With probability ``mixup_prob`` per batch, one ``lam ~ Beta(alpha, alpha)`` is drawn and the batch is mixed
with a random permutation of itself: ``x' = lam * x + (1 - lam) * x[perm]``; the target is the soft label
``lam * onehot(y) + (1 - lam) * onehot(y[perm])``. Interpolating samples encourages smoother decision
boundaries (a data-level domain-generalisation baseline of the paper, Table 1).

The criterion takes integer labels, so the loss is ``lam * L(logits, y) + (1 - lam) * L(logits, y[perm])``.
Cross-entropy is linear in the target, so its part equals cross-entropy on the soft target exactly; the
Dice part is not (its denominator depends on the target), so it becomes the same mixture of the two Dice
losses, the usual practice for segmentation MixUp. Nothing is mixed at inference.
"""

from __future__ import annotations

import torch

from maskgen.methods.base import HParam, Method, register_method


def mix(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[perm]`` along the batch dimension."""
    return lam * x + (1.0 - lam) * x[perm]


@register_method("mixup")
class MixUp(Method):
    uses_features = False
    DIAGNOSTICS = ('mixup_lam',)
    HPARAMS = {
        "mixup_prob": HParam(0.5, "probability of mixing a training batch (paper: tuned on validation)"),
        "mixup_alpha": HParam(0.4, "MixUp interpolation lam ~ Beta(alpha, alpha) (Zhang et al.: 0.1-0.4)"),
    }

    def training_loss(self, image, features, target, criterion):
        batch = image.shape[0]
        if batch < 2 or torch.rand(()).item() >= self.hparams["mixup_prob"]:
            return super().training_loss(image, features, target, criterion)
        alpha = torch.tensor(float(self.hparams["mixup_alpha"]))
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(batch).to(image.device)
        logits = self.network(self.compose(mix(image, lam, perm), features))  # image-only method: features unused
        loss = lam * criterion(logits, target) + (1.0 - lam) * criterion(logits, target[perm])
        return loss, {"mixup_lam": lam}
