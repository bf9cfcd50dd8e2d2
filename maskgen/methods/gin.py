"""GIN (Ouyang et al. 2022): Global Intensity Non-linear augmentation by a random shallow conv net.

Every forward draws a new random network (per sample: its own kernels and shifts) of ``n_layers`` 3D
convolutions with ``interm_channels`` intermediate channels, each kernel size drawn from {1, 3} per layer,
LeakyReLU between layers. Its output is Frobenius-normalised to the input's norm (per sample), mixed with
the input by ``alpha ~ U(0, 1)`` per sample, ``alpha * gin(x) + (1 - alpha) * x``, and normalised again
to the input's norm. Such random non-linear intensity and texture remappings keep shapes but change
appearance, simulating unseen imaging domains (the paper's GIN baseline, with the reference
``GINGroupConv3D`` defaults). The augmentation has no trainable parameters and no gradient.

``GINGroupConv3D`` is reusable on its own (``gin_ipa`` builds on it). The method applies it to the image
in training only, to each sample with probability ``gin_prob`` (1: always, as in Ouyang et al.).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from maskgen.methods.base import HParam, Method, register_method


def frobenius_match(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rescale each sample of ``x`` to the Frobenius norm (over channels and space) of ``ref``'s sample."""
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    x_norm = x.flatten(1).norm(dim=1).clamp_min(eps).view(shape)
    return x * (ref.flatten(1).norm(dim=1).view(shape) / x_norm)


class GINGroupConv3D(nn.Module):
    """Random shallow 3D conv net, re-drawn at every call; (B, C, D, H, W) -> same shape and per-sample norm."""

    def __init__(self, n_layers: int = 4, interm_channels: int = 2, kernel_sizes: Sequence[int] = (1, 3),
                 negative_slope: float = 0.01):
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"GIN needs at least 2 layers, got {n_layers}")
        if any(k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"GIN kernel sizes must be odd, got {tuple(kernel_sizes)}")
        self.n_layers = n_layers
        self.interm_channels = interm_channels
        self.kernel_sizes = tuple(kernel_sizes)
        self.negative_slope = negative_slope

    def _random_conv(self, h: torch.Tensor, cout: int) -> torch.Tensor:
        """One grouped conv: each sample gets its own random kernel (size drawn per layer) and shift."""
        b, cin, *spatial = h.shape
        k = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), ()))]
        weight = torch.randn(b * cout, cin, k, k, k, device=h.device, dtype=h.dtype)
        shift = torch.randn(b * cout, device=h.device, dtype=h.dtype)
        out = F.conv3d(h.reshape(1, b * cin, *spatial), weight, shift, padding=k // 2, groups=b)
        return out.view(b, cout, *spatial)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(self.n_layers):
            last = i == self.n_layers - 1
            h = self._random_conv(h, x.shape[1] if last else self.interm_channels)
            if not last:
                h = F.leaky_relu(h, self.negative_slope)
        alpha = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device, dtype=x.dtype)
        mixed = alpha * frobenius_match(h, x) + (1.0 - alpha) * x
        return frobenius_match(mixed, x)


@register_method("gin")
class GIN(Method):
    uses_features = False
    HPARAMS = {
        "gin_prob": HParam(1.0, "probability of applying GIN to each training sample (Ouyang et al.: always)"),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gin = GINGroupConv3D()

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """GIN on each sample with probability ``gin_prob``; the others pass unchanged."""
        p = self.hparams["gin_prob"]
        if p <= 0:
            return image
        out = self.gin(image)
        if p < 1:
            keep = torch.rand(image.shape[0], device=image.device) >= p
            out = torch.where(keep.view(-1, *([1] * (image.ndim - 1))), image, out)
        return out

    def training_loss(self, image, features, target, criterion):
        logits = self.network(self.compose(self.augment(image), features))
        return criterion(logits, target), {}
