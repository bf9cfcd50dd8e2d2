"""CutOut (DeVries and Taylor 2017): blank a random cube of the image and of its label.

Removing a random region of both image and label keeps the network from relying on small, highly
discriminative regions (a data-level domain-generalisation baseline of the paper, Table 1). With
probability ``cutout_prob``, independently per sample, a cube whose side is ``cutout_size`` times each
spatial size (rounded, at least one voxel; wholly inside the patch) is blanked: its labels become
background (0) and its image voxels become grey. As in the paper (C.6) the image (in [0, 1]) is
zero-centred, the cube zeroed and the image shifted back, i.e. the cube takes the sample's mean intensity
(per channel) rather than 0, which stabilised BatchNorm; everything outside the cube is unchanged, so the
inference input (the plain image) needs no centring to match.

The paper's cube-size fraction was lost in its text extraction; the default 0.25 (a cube of 1/64 of the
patch volume, 32^3 of a 128^3 crop) is our choice. Nothing is cut at inference.
"""

from __future__ import annotations

import torch

from maskgen.methods.base import HParam, Method, register_method


def cutout_mask(shape: tuple[int, ...], prob: float, size: float, device=None) -> torch.Tensor:
    """Boolean mask (B, 1, *spatial): one random cube per selected sample (each with probability ``prob``)."""
    if not 0.0 < size <= 1.0:
        raise ValueError(f"cutout size must be a fraction in (0, 1], got {size}")
    batch, spatial = shape[0], shape[2:]
    sides = [max(1, round(size * s)) for s in spatial]
    mask = torch.zeros(batch, 1, *spatial, dtype=torch.bool)
    for i in range(batch):
        if torch.rand(()).item() >= prob:
            continue
        starts = [int(torch.randint(s - side + 1, ())) for s, side in zip(spatial, sides)]
        mask[(i, slice(None), *(slice(lo, lo + side) for lo, side in zip(starts, sides)))] = True
    return mask.to(device)


def cutout(image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey cube in the image (per-sample, per-channel mean) and background in the label where ``mask``."""
    mean = image.mean(dim=tuple(range(2, image.ndim)), keepdim=True)
    return torch.where(mask, mean, image), target.masked_fill(mask, 0)


@register_method("cutout")
class CutOut(Method):
    uses_features = False
    HPARAMS = {
        "cutout_prob": HParam(0.5, "probability of cutting a cube out of each training sample (paper: tuned)"),
        "cutout_size": HParam(0.25, "CutOut cube side as a fraction of each spatial size of the patch"),
    }

    def training_loss(self, image, features, target, criterion):
        mask = cutout_mask(tuple(image.shape), self.hparams["cutout_prob"], self.hparams["cutout_size"], image.device)
        image, target = cutout(image, target, mask)
        logits = self.network(self.compose(image, features))
        return criterion(logits, target), {}
