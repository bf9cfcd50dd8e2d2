"""The training loss: MONAI's Dice + cross-entropy, and the same with nnU-Net's ignore label left out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss
from torch import nn


def segmentation_loss(ignore_index: int | None = None) -> nn.Module:
    """Batch Dice (nnU-Net's choice: a class absent from one patch does not push its probability to 0) plus
    cross-entropy; with ``ignore_index`` its voxels count in neither term."""
    if ignore_index is None:
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    return DiceCEIgnore(ignore_index)


class DiceCEIgnore(nn.Module):
    """``DiceCELoss`` with the voxels labelled ``ignore_index`` removed: no cross-entropy there, and both the
    softmax and the one-hot target zeroed there before the Dice sums. Equal to ``DiceCELoss`` (same
    smoothing) when no voxel is ignored; MONAI's Dice loss has no ignore option, hence this class."""

    def __init__(self, ignore_index: int):
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.dice = DiceLoss(include_background=False, batch=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target[:, 0].long() if target.dim() == logits.dim() else target.long()
        keep = t != self.ignore_index
        if not bool(keep.any()):
            return logits.sum() * 0.0  # a fully unannotated patch: no gradient, no NaN
        ce = F.cross_entropy(logits.float(), t, ignore_index=self.ignore_index)
        mask = keep.unsqueeze(1).to(logits.dtype)
        probs = torch.softmax(logits.float(), dim=1) * mask
        onehot = F.one_hot(torch.where(keep, t, 0), logits.shape[1]).movedim(-1, 1).to(probs.dtype) * mask
        return self.dice(probs, onehot) + ce
