"""Channel dropout: the image-only UNet with ``nn.Dropout3d`` after every Conv-BN-ReLU block.

The paper's "targeted vs generic masking" ablation (Table 5): masking whole channels of every
intermediate layer of an image-only network (channel dropout, Tompson et al. 2015) instead of masking the
views of [image, g(image)]. It regularises but gives no stable source to fall back on, and does worse
out of domain than MaskGen. Dropout is active in training only (``nn.Dropout3d`` obeys ``eval()``).

The paper does not give the rate; the default 0.25 is a usual spatial-dropout rate for a dropout placed
after *every* block (0.5 there, compounded over ~20 blocks, is far harsher than MaskGen's 0.5 on the
input alone). Tune it on validation like the other baselines.
"""

from __future__ import annotations

from torch import nn

from maskgen.methods.base import HParam, Method, register_method
from maskgen.models.unet import ConvBNReLU


def add_channel_dropout(net: nn.Module, p: float) -> nn.Module:
    """Append ``nn.Dropout3d(p)`` to every ConvBNReLU block of ``net`` in place (no parameters are added)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    for block in [m for m in net.modules() if isinstance(m, ConvBNReLU)]:
        block.append(nn.Dropout3d(p))
    return net


@register_method("channel_dropout")
class ChannelDropout(Method):
    uses_features = False
    HPARAMS = {
        "dropout_rate": HParam(0.25, "channel (Dropout3d) rate after every Conv-BN-ReLU block of the UNet"),
    }

    def build_network(self) -> nn.Module:
        return add_channel_dropout(super().build_network(), self.hparams["dropout_rate"])
