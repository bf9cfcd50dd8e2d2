"""Preprocessing shared by training and prediction: orientation, spacing, intensity normalisation.

One function builds the transform so ``predict`` sees exactly what training saw. Intensities: MR is
min-max scaled to [0, 1]; CT is clipped to [-1024, 1024] HU, then scaled to [0, 1] (paper / reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)

CT_WINDOW = (-1024.0, 1024.0)


def intensity_transform(modality: str, keys=("image",)):
    if modality.upper() == "CT":
        return ScaleIntensityRanged(keys, a_min=CT_WINDOW[0], a_max=CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)
    return ScaleIntensityd(keys, minv=0.0, maxv=1.0)


def preprocess_transform(spacing: Sequence[float] | None, modality: str, with_label: bool) -> Compose:
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    ts = [
        LoadImaged(keys, image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if spacing is not None:
        ts.append(Spacingd(keys, pixdim=tuple(float(s) for s in spacing), mode=modes))
    ts.append(intensity_transform(modality))
    return Compose(ts)


def load_case(
    image: str | Path, label: str | Path | None, spacing: Sequence[float] | None, modality: str
) -> dict[str, MetaTensor]:
    """Image (1, D, H, W) float32 in [0, 1] and label (1, D, H, W) uint8, in RAS at ``spacing``."""
    data = {"image": str(image)}
    if label is not None:
        data["label"] = str(label)
    out = preprocess_transform(spacing, modality, label is not None)(data)
    out["image"] = out["image"].float()
    if label is not None:
        lab = out["label"]
        out["label"] = MetaTensor(torch.round(lab.as_tensor()).to(torch.uint8), meta=lab.meta)
    return out


def median_spacing(paths: Sequence[str | Path]) -> tuple[float, float, float]:
    """The nnU-Net-style target spacing: per-axis median of the training images (in RAS order)."""
    import nibabel as nib

    sp = []
    for p in paths:
        img = nib.as_closest_canonical(nib.load(str(p)))
        sp.append(img.header.get_zooms()[:3])
    return tuple(float(v) for v in np.median(np.asarray(sp, dtype=float), axis=0))
