"""MaskGen: UNet on [image, g(image)] with random view masking of whole input channels during training.

``rescale`` is the reference code's behaviour (``dropout3d`` on the concatenated input: each channel of
each sample, image included, zeroed with probability p and the kept ones scaled by 1/(1-p)); ``zero``
zeroes without rescaling, so the input variance seen by the first BatchNorm does not shift between
training and inference. Nothing is masked at inference.
"""

from __future__ import annotations

import torch

from maskgen.methods.base import HParam, Method, register_method

MASK_MODES = ("rescale", "zero")


def view_mask(x: torch.Tensor, p: float, mode: str = "rescale", generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each channel of each sample with probability ``p`` (whole channels, all voxels)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"mask rate must be in [0, 1), got {p}")
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    if p == 0.0:
        return x
    keep = torch.rand(x.shape[:2], generator=generator, device="cpu").ge(p).to(device=x.device, dtype=x.dtype)
    keep = keep.view(*x.shape[:2], *([1] * (x.ndim - 2)))
    if mode == "rescale":
        keep = keep / (1.0 - p)
    return x * keep


@register_method("maskgen")
class MaskGen(Method):
    uses_features = True
    HPARAMS = {
        "mask_rate": HParam(0.5, "probability of masking each input channel (paper: 0.5 untuned; reference default 0.75)"),
        "mask_mode": HParam("rescale", "rescale kept channels by 1/(1-p) (reference) or plain zeroing", MASK_MODES),
    }

    def training_loss(self, image, features, target, criterion):
        x = view_mask(self.compose(image, features), self.hparams["mask_rate"], self.hparams["mask_mode"])
        loss = criterion(self.network(x), target)
        return loss, {}
