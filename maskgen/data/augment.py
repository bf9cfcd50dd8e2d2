"""The paper's augmentation pipeline (appendix C.2), built from MONAI transforms, each with p = 0.33.

Order follows the paper: flips and a 90-degree rotation (skipped with ``flips=False`` where left/right
matters), resolution, noise, bias field, Gibbs ringing, gamma, smoothing, sharpening, then the affine
(geometric, last), and a final min-max rescale to [0, 1].
"""

from __future__ import annotations

import math

from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandAxisFlipd,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandGibbsNoised,
    RandRotate90d,
    RandSimulateLowResolutiond,
    ScaleIntensityd,
)


def build_augmentation(prob: float = 0.33, flips: bool = True, keys=("image", "label")) -> Compose:
    img, lab = keys
    ts = []
    if flips:
        ts += [
            RandFlipd(keys, prob=prob, spatial_axis=0),
            RandAxisFlipd(keys, prob=prob),
            RandRotate90d(keys, prob=prob, spatial_axes=(0, 1)),
        ]
    ts += [
        RandSimulateLowResolutiond(img, prob=prob, zoom_range=(0.25, 1.0)),
        RandGaussianNoised(img, prob=prob),
        RandBiasFieldd(img, prob=prob, coeff_range=(0.0, 0.1)),
        RandGibbsNoised(img, prob=prob, alpha=(0.0, 0.33)),
        RandAdjustContrastd(img, prob=prob),
        RandGaussianSmoothd(img, prob=prob, sigma_x=(0.0, 0.1), sigma_y=(0.0, 0.1), sigma_z=(0.0, 0.1)),
        RandGaussianSharpend(img, prob=prob),
        RandAffined(
            keys,
            prob=prob,
            rotate_range=(math.pi / 4,) * 3,
            shear_range=(0.2,) * 6,
            scale_range=(0.2,) * 3,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        ScaleIntensityd(img, minv=0.0, maxv=1.0),
    ]
    return Compose(ts)
