"""A stable extractor over several image channels: its features for each channel read, concatenated.

Extractors are trained (or designed) on one grey-level image, so a multi-channel case is read one channel
at a time: ``reads=(0, 1)`` gives ``[g(x0), g(x1)]``. The default reads every channel, so each modality
brings its own stable features and a missing channel (``predict --missing``) takes only its own features
away; reading one named channel (``--features-from NAME``) costs 1/N of the compute but loses all
features when that channel is missing. ``absent`` channels give zero features (their image is zeros too):
what MaskGen's training masks looked like, rather than the extractor's response to an empty image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maskgen.data.cases import channel_index
from maskgen.extractors.base import StableExtractor


class ChannelwiseExtractor(StableExtractor):
    name = "channelwise"

    def __init__(self, base: StableExtractor, reads: Sequence[int]):
        super().__init__()
        if not reads:
            raise ValueError("the extractor must read at least one image channel")
        self.base: nn.Module = base
        self.reads = tuple(int(c) for c in reads)
        self.name = base.name
        self.out_channels = base.out_channels * len(self.reads)
        self.size_multiple, self.min_size, self.normalize = base.size_multiple, base.min_size, base.normalize
        self.receptive_radius = base.receptive_radius
        #: input channels treated as missing (``predict --missing``): zero features
        self.absent: frozenset[int] = frozenset()

    def feature_slices(self) -> dict[int, slice]:
        """Input channel -> the slice of feature channels computed from it."""
        k = self.base.out_channels
        return {c: slice(i * k, (i + 1) * k) for i, c in enumerate(self.reads)}

    @torch.no_grad()
    def forward(self, x: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        parts = []
        for c in self.reads:
            channel = x[:, c:c + 1]
            if c in self.absent:
                parts.append(channel.new_zeros((x.shape[0], self.base.out_channels, *x.shape[2:])))
            else:
                parts.append(self.base(channel, normalize=normalize))
        return torch.cat(parts, dim=1)


def feature_reads(features_from: str | int | None, channels: Sequence[str]) -> list[int]:
    """The channels ``--features-from`` names: ``all`` (default), a channel's name or its index."""
    if features_from in (None, "all"):
        return list(range(len(channels)))
    hit = channel_index(features_from, list(channels))
    if hit is not None:
        return [hit]
    listed = ", ".join(f"{i}={n}" for i, n in enumerate(channels))
    raise ValueError(f"--features-from {features_from!r}: no such channel (the dataset's channels: {listed}; or 'all')")
