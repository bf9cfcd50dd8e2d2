"""GIN+IPA (Ouyang et al. 2022): GIN views blended by a smooth random field, with a KL consistency loss.

Why: GIN changes global intensity/texture; IPA (interventional pseudo-correlation augmentation) also
breaks the spurious *spatial* correlation between appearance and label by mixing two differently
GIN-augmented copies of the same image with a smooth random blending field ``m`` in [0, 1], so every
region of the patch gets its own appearance. A consistency term asks for the same prediction whatever the
intervention. The paper's overall runner-up (Table 1, rank 2.5), at ~5.5x ERM's training time.

Per training batch, as in the authors' reference code (``exp_trainer.py``; effective batch x3, paper C.6):
three GIN draws ``g1, g2, g3`` (``GINGroupConv3D`` from ``gin.py``, its reference defaults) give the views
``m * g1 + (1 - m) * g2``, ``(1 - m) * g1 + m * g2`` and ``g3``, segmented in one batch of 3B.

- Blending field ``m``: a random control grid (N(0, 1) values, spacing ``ipa_spacing`` times each patch
  side) interpolated by a uniform **cubic B-spline** (separable transposed convolution with the 4-fold box
  kernel, C2-smooth), then min-max rescaled to [0, 1] per sample, as the reference rescales its bias field.
  The reference's 0.25 spacing: control points every 48 px on 192 px images (its ``blend_grid_size`` 24 x
  ``downscale`` 2); the reference interpolates with order 2 and takes ``exp`` of a unit-norm grid first,
  which the min-max rescaling makes nearly immaterial, so we skip it.
- Loss: the segmentation criterion on every view (mean over the three; the reference supervises only the
  first blended view) + ``consistency_weight`` x KL(mean prediction || each view's prediction), averaged
  over all elements like ``nn.KLDivLoss()`` in the reference (so it is per-voxel KL / n_classes).
  ``consistency_weight`` 10: the original recommendation and the reference default; the paper swept
  {1, 10, 20} on validation.

Nothing is augmented at inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from maskgen.methods.base import HParam, Method, register_method
from maskgen.methods.gin import GINGroupConv3D


def bspline_kernel(spacing: int, order: int = 3) -> torch.Tensor:
    """1D uniform B-spline kernel of degree ``order`` for control points ``spacing`` samples apart (sums to 1)."""
    box = torch.full((1, 1, spacing), 1.0 / spacing)
    k = box
    for _ in range(order):
        k = F.conv1d(k, box, padding=spacing - 1)
    return k.view(-1)


def bspline_field(shape: Sequence[int], spacing: Sequence[int], order: int = 3, device=None) -> torch.Tensor:
    """Smooth random field (B, 1, *spatial): N(0, 1) control points ``spacing`` voxels apart per axis,
    interpolated by a separable uniform B-spline of degree ``order`` (cropped where fully supported)."""
    batch, spatial = shape[0], tuple(shape[2:])
    if len(spacing) != len(spatial):
        raise ValueError(f"need one spacing per spatial axis, got {tuple(spacing)} for {spatial}")
    n_cp = [math.ceil(s / sp) + order + 1 for s, sp in zip(spatial, spacing)]
    field = torch.randn(batch, 1, *n_cp, device=device)
    for axis, (size, sp) in enumerate(zip(spatial, spacing)):
        dim = 2 + axis
        kernel = bspline_kernel(sp, order).to(field).view(1, 1, -1)
        moved = field.movedim(dim, -1)
        lead = moved.shape[:-1]
        out = F.conv_transpose1d(moved.reshape(-1, 1, moved.shape[-1]), kernel, stride=sp)
        start = order * sp  # from here on every sample has order + 1 control points in its support
        out = out[..., start : start + size]
        field = out.reshape(*lead, size).movedim(-1, dim)
    return field


def ipa_blend_mask(shape: Sequence[int], spacing_fraction: float, device=None) -> torch.Tensor:
    """IPA blending field (B, 1, *spatial) in [0, 1]: cubic B-spline field, min-max rescaled per sample."""
    if not 0.0 < spacing_fraction <= 1.0:
        raise ValueError(f"IPA control-point spacing must be a fraction in (0, 1], got {spacing_fraction}")
    spacing = [max(1, round(spacing_fraction * s)) for s in shape[2:]]
    field = bspline_field(shape, spacing, device=device)
    flat = field.flatten(1)
    lo = flat.min(1).values.view(-1, *([1] * (field.ndim - 1)))
    hi = flat.max(1).values.view(-1, *([1] * (field.ndim - 1)))
    return ((field - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)


def blend(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * a + (1 - mask) * b``: voxelwise between ``a`` and ``b`` for a mask in [0, 1]."""
    return mask * a + (1.0 - mask) * b


def consistency_kl(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over views and elements of KL(mean prediction || view prediction), as the reference's
    ``KLDivLoss()(log_softmax(view), mean softmax)``: 0 iff all views predict the same."""
    logp = [F.log_softmax(lg.float(), dim=1) for lg in logits]
    mean = torch.stack([lp.exp() for lp in logp]).mean(0)
    return torch.stack([(torch.xlogy(mean, mean) - mean * lp).mean() for lp in logp]).mean()


@register_method("gin_ipa")
class GINIPA(Method):
    uses_features = False
    DIAGNOSTICS = ('seg_loss', 'consistency_kl')
    HPARAMS = {
        "consistency_weight": HParam(10.0, "GIN+IPA weight of the KL consistency loss (Ouyang et al.: 10; "
                                           "paper swept 1, 10, 20)"),
        "ipa_spacing": HParam(0.25, "GIN+IPA B-spline control-point spacing as a fraction of each patch side "
                                    "(reference: 48 of 192 px)"),
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gin = GINGroupConv3D()

    def views(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three training views: the two complementary IPA blends of two GIN draws, and a third GIN draw."""
        g1, g2, g3 = self.gin(image), self.gin(image), self.gin(image)
        mask = ipa_blend_mask(tuple(image.shape), self.hparams["ipa_spacing"], image.device).to(image.dtype)
        return blend(g1, g2, mask), blend(g2, g1, mask), g3

    def training_loss(self, image, features, target, criterion):
        views = self.views(image)
        batch = image.shape[0]
        logits = self.network(self.compose(torch.cat(views), features)).split(batch)
        seg = torch.stack([criterion(lg, target) for lg in logits]).mean()
        kl = consistency_kl(logits)
        loss = seg + self.hparams["consistency_weight"] * kl
        return loss, {"seg_loss": float(seg.detach()), "consistency_kl": float(kl.detach())}
