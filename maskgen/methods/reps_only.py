"""Reps only: the UNet reads the frozen stable features g(x) alone, never the image.

The paper's ablation (Table 6, "reps only"): dropping the unstable source entirely removes the shortcut
through the image but also its in-domain detail, and the paper finds it inconsistent across datasets;
MaskGen keeps both sources and masks them instead.
"""

from __future__ import annotations

import torch

from maskgen.methods.base import Method, register_method


@register_method("reps_only")
class RepsOnly(Method):
    uses_features = True

    def __init__(self, image_channels: int, feature_channels: int, n_classes: int, network=None, hparams=None):
        if feature_channels < 1:
            raise ValueError("method 'reps_only' needs at least one stable feature channel")
        super().__init__(image_channels, feature_channels, n_classes, network, hparams)

    @property
    def in_channels(self) -> int:
        return self.feature_channels

    def compose(self, image: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        if features is None:
            raise ValueError(f"method {self.name!r} needs stable features")
        return features
