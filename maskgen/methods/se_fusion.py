"""SE fusion: [image, g(image)] fused by a squeeze-and-excitation gate before the UNet, no masking.

The paper's alternative fusion (appendix B.4, Table 8): a channel-attention gate (Hu et al. 2017) learns
how much of each input channel, image or stable feature, to pass on: global average pool over space ->
MLP (C -> max(1, C // 2) -> C, ReLU) -> sigmoid -> channel-wise scaling, trained end to end with the UNet.
Being trained by the in-domain loss alone, the gate can still learn the image shortcut, which is why it
generalises worse than view masking.
"""

from __future__ import annotations

import torch
from torch import nn

from maskgen.methods.base import Method, register_method
from maskgen.models import UNet


class SqueezeExcite(nn.Module):
    """Channel gate on (B, C, *spatial): ``x * sigmoid(MLP(mean over space of x))``."""

    def __init__(self, channels: int, reduction: int = 2):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample, per-channel gate values in (0, 1), shape (B, C)."""
        return torch.sigmoid(self.mlp(x.flatten(2).mean(-1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x).view(*x.shape[:2], *([1] * (x.ndim - 2)))


class SEFusionNet(nn.Module):
    """The SE gate followed by the UNet."""

    def __init__(self, in_channels: int, out_channels: int, **unet_kwargs):
        super().__init__()
        self.se = SqueezeExcite(in_channels)
        self.unet = UNet(in_channels, out_channels, **unet_kwargs)

    @property
    def size_multiple(self) -> int:
        return self.unet.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(self.se(x))


@register_method("se_fusion")
class SEFusion(Method):
    uses_features = True

    def build_network(self) -> nn.Module:
        return SEFusionNet(self.in_channels, self.n_classes, **self.network_kwargs)
