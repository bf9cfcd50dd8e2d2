"""MaskGen: UNet on [image, g(image)] with random view masking of whole input channels during training.

``rescale`` is the reference code's behaviour (``dropout3d`` on the concatenated input: each channel of
each sample, image included, zeroed with probability p and the kept ones scaled by 1/(1-p)); ``zero``
zeroes without rescaling, so the input variance seen by the first BatchNorm does not shift between
training and inference. Nothing is masked at inference.

``mask_unit``: what one coin flip masks. ``channel`` (the reference code and the paper's experiments): each
input channel on its own, so with C feature channels the image is the channel most often missing while
some features are almost always there (all C masked: p^C). ``source`` (the view the paper's analysis
assumes, "mask x or mask g(x)"): the image channels as one unit and the stable features as another, so the
image-only view (probability p(1-p)) is seen as often as the features-only one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from maskgen.methods.base import IMAGE_NORM, HParam, Method, register_method

MASK_MODES = ("rescale", "zero")
MASK_UNITS = ("channel", "source")


def view_mask(x: torch.Tensor, p: float, mode: str = "rescale", generator: torch.Generator | None = None,
              groups: Sequence[int] | None = None) -> torch.Tensor:
    """Zero each channel of each sample with probability ``p`` (whole channels, all voxels); with ``groups``
    (sizes of consecutive channel blocks summing to the channel count), each block of each sample as one."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"mask rate must be in [0, 1), got {p}")
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {MASK_MODES}, got {mode!r}")
    sizes = [1] * x.shape[1] if groups is None else [int(g) for g in groups if int(g) > 0]
    if sum(sizes) != x.shape[1]:
        raise ValueError(f"mask groups {list(groups or [])} do not add up to the input's {x.shape[1]} channels")
    if p == 0.0:
        return x
    keep = torch.rand((x.shape[0], len(sizes)), generator=generator, device="cpu").ge(p)
    keep = keep.repeat_interleave(torch.tensor(sizes), dim=1).to(device=x.device, dtype=x.dtype)
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
        "mask_unit": HParam("channel", "mask each input channel on its own (reference, the paper's experiments) or "
                                       "each source, the image and the features, as a whole (the paper's analysis)",
                            MASK_UNITS),
        "image_norm": IMAGE_NORM,
    }

    def training_loss(self, image, features, target, criterion):
        groups = [self.image_channels, self.feature_channels] if self.hparams["mask_unit"] == "source" else None
        x = view_mask(self.compose(image, features), self.hparams["mask_rate"], self.hparams["mask_mode"],
                      groups=groups)
        loss = criterion(self.network(x), target)
        return loss, {}
