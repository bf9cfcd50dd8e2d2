"""The 3D UNet of the MaskGen paper (Table 15).

Encoder: ``convs_per_level`` Conv-BN-ReLU blocks per level (3 in the paper), MaxPool(2) between levels,
width doubling per level; decoder: nearest upsampling x2, concatenation with the encoder skip
(skip first), 2 Conv-BN-ReLU blocks; a 1x1x1 head gives the class logits. Depth and base width are
configurable so the same network fits small patches and CPUs (paper: 5 poolings; reference: base 20).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, padding_mode: str = "reflect"):
        super().__init__(
            nn.Conv3d(cin, cout, 3, padding=1, padding_mode=padding_mode, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_width: int = 20,
        n_poolings: int = 5,
        convs_per_level: int = 3,
        decoder_convs: int = 2,
        padding_mode: str = "reflect",
    ):
        super().__init__()
        if in_channels < 1:
            raise ValueError("UNet needs at least one input channel")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_poolings = n_poolings
        widths = [base_width * 2**i for i in range(n_poolings + 1)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for w in widths:
            blocks = [ConvBNReLU(cin if i == 0 else w, w, padding_mode) for i in range(convs_per_level)]
            self.encoders.append(nn.Sequential(*blocks))
            cin = w
        self.pool = nn.MaxPool3d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.decoders = nn.ModuleList()
        for level in reversed(range(n_poolings)):
            w = widths[level]
            cin = widths[level] + widths[level + 1]
            blocks = [ConvBNReLU(cin if i == 0 else w, w, padding_mode) for i in range(decoder_convs)]
            self.decoders.append(nn.Sequential(*blocks))
        self.head = nn.Conv3d(widths[0], out_channels, 1)

    @property
    def _probe_weight(self) -> torch.Tensor:
        """A conv weight whose memory format is unambiguous (more than one input channel, 3x3x3)."""
        return self.encoders[-1][0][0].weight

    @property
    def size_multiple(self) -> int:
        """Patch sizes must be multiples of this."""
        return 2**self.n_poolings

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for i, enc in enumerate(self.encoders):
            if i > 0:
                x = self.pool(x)
            x = enc(x)
            skips.append(x)
        return skips

    def decode(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for dec, skip in zip(self.decoders, reversed(skips[:-1])):
            x = dec(torch.cat([skip, self.up(x)], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.size_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(
                f"UNet with {self.n_poolings} poolings needs spatial sizes divisible by {m}, got {tuple(x.shape[2:])}"
            )
        if self._probe_weight.is_contiguous(memory_format=torch.channels_last_3d):
            # weights placed channels-last (CPU, see ``place_model``): feed activations the same way
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.decode(self.encode(x))
