"""Preprocessing shared by training and prediction: orientation, spacing, intensity normalisation.

One function builds the transform so ``predict`` sees exactly what training saw. Intensities: MR is
min-max scaled to [0, 1]; CT is clipped to [-1024, 1024] HU, then scaled to [0, 1] (paper / reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor, NibabelReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.utils import ensure_tuple

from maskgen.data.volumes import load_volume, read_with_nibabel, volume_ending

CT_WINDOW = (-1024.0, 1024.0)


class VolumeReader(NibabelReader):
    """MONAI's nibabel reader, fed by :func:`maskgen.data.volumes.load_volume`, so SimpleITK formats (.mha,
    .nrrd) arrive as the same RAS NIfTI images as nibabel ones and every later transform is shared."""

    def verify_suffix(self, filename) -> bool:
        return all(volume_ending(f) is not None for f in ensure_tuple(filename))

    def read(self, data, **kwargs):
        if all(read_with_nibabel(f) for f in ensure_tuple(data)):
            return super().read(data, **kwargs)
        imgs = [load_volume(f) for f in ensure_tuple(data)]
        self.filenames = ensure_tuple(data)
        return imgs if len(imgs) > 1 else imgs[0]


def intensity_transform(modality: str, keys=("image",)):
    if modality.upper() == "CT":
        return ScaleIntensityRanged(keys, a_min=CT_WINDOW[0], a_max=CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)
    return ScaleIntensityd(keys, minv=0.0, maxv=1.0)


def preprocess_transform(spacing: Sequence[float] | None, modality: str | Sequence[str], with_label: bool,
                         image_keys: Sequence[str] = ("image",)) -> Compose:
    """Read, RAS, resample and normalise; each of ``image_keys`` (one per channel) by its own ``modality``."""
    modalities = [modality] * len(image_keys) if isinstance(modality, str) else list(modality)
    keys = [*image_keys, "label"] if with_label else list(image_keys)
    modes = ["bilinear"] * len(image_keys) + (["nearest"] if with_label else [])
    ts = [
        # one reader for every format the dataset check accepts (MONAI picks none for .mgz/.mgh/.mha itself)
        LoadImaged(keys, reader=VolumeReader(), image_only=True),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
    ]
    if spacing is not None:
        ts.append(Spacingd(keys, pixdim=tuple(float(s) for s in spacing), mode=modes))
    ts += [intensity_transform(m, (k,)) for k, m in zip(image_keys, modalities)]
    return Compose(ts)


def load_case(
    image: str | Path | Sequence[str | Path | None], label: str | Path | None, spacing: Sequence[float] | None,
    modality: str | Sequence[str], class_values: Sequence[int] | None = None, ignore_value: int | None = None,
) -> dict[str, MetaTensor]:
    """Image (C, D, H, W) float32 in [0, 1] and label (1, D, H, W) of class indices, in RAS at ``spacing``.

    ``image`` is one file or one file per channel (each normalised by its own entry of ``modality``); a
    channel given as None is absent (``predict --missing``) and comes back as zeros on the others' grid.
    Label value ``class_values[i]`` becomes class index ``i`` (None: the values are the indices), so
    declared values of any size (FreeSurfer's 2035) stay exact; a value outside ``class_values`` is an
    error naming the file, never a silent wrap-around. ``ignore_value`` (nnU-Net's ignore label) becomes
    index ``len(class_values)``, one past the last class, so losses and scores can leave it out.
    """
    paths = [image] if isinstance(image, (str, Path)) else list(image)
    modalities = [modality] * len(paths) if isinstance(modality, str) else list(modality)
    if len(modalities) != len(paths):
        raise ValueError(f"{len(paths)} channel file(s) but {len(modalities)} modalities")
    present = [i for i, p in enumerate(paths) if p is not None]
    if not present:
        raise ValueError("every channel is missing: at least one image file is needed")
    keys = [f"image_{i}" for i in present]
    data = {k: str(paths[i]) for k, i in zip(keys, present)}
    if label is not None:
        data["label"] = str(label)
    out = preprocess_transform(spacing, [modalities[i] for i in present], label is not None, keys)(data)
    first = out[keys[0]]
    channels = [None] * len(paths)
    for k, i in zip(keys, present):
        channels[i] = out.pop(k).as_tensor().float()
    channels = [c if c is not None else torch.zeros_like(first.as_tensor(), dtype=torch.float32) for c in channels]
    out["image"] = MetaTensor(torch.cat(channels, dim=0), meta=first.meta)
    if label is not None:
        lab = out["label"]
        out["label"] = MetaTensor(label_to_classes(lab.as_tensor(), class_values, label, ignore_value), meta=lab.meta)
    return out


def class_index_dtype(n_classes: int) -> torch.dtype:
    return torch.uint8 if n_classes <= 256 else torch.int16 if n_classes <= 32768 else torch.int32


def label_to_classes(label: torch.Tensor, class_values: Sequence[int] | None, source: str | Path = "label",
                     ignore_value: int | None = None) -> torch.Tensor:
    """Integer label values -> class indices (position in ``class_values``; ``ignore_value`` -> one past the
    last); ``class_values`` None keeps the values."""
    values = torch.round(label).to(torch.int64)
    if ignore_value is not None and class_values is not None:
        ignored = values == int(ignore_value)
        classes = label_to_classes(torch.where(ignored, int(class_values[0]), values).float(), class_values, source)
        n = len(class_values)
        return torch.where(ignored, n, classes.to(torch.int64)).to(class_index_dtype(n + 1))
    if class_values is None:
        if values.numel() and int(values.min()) < 0:
            raise ValueError(f"{source}: negative label values")
        return values.to(class_index_dtype(int(values.max()) + 1 if values.numel() else 1))
    table = torch.as_tensor(sorted(int(v) for v in class_values), dtype=torch.int64)
    if list(table) != [int(v) for v in class_values]:
        raise ValueError(f"class values must be sorted ascending, got {list(class_values)}")
    idx = torch.searchsorted(table, values).clamp_max(len(table) - 1)
    bad = table[idx] != values
    if bool(bad.any()):
        shown = sorted({int(v) for v in values[bad].unique()[:10]})
        raise ValueError(f"{source}: label values {shown} are not declared (declared: {table.tolist()})")
    return idx.to(class_index_dtype(len(table)))


def classes_to_label(classes: np.ndarray, class_values: Sequence[int]) -> np.ndarray:
    """Class indices -> the dataset's label values, in the smallest integer type that holds them."""
    table = np.asarray([int(v) for v in class_values], dtype=np.int64)
    top = int(table.max()) if table.size else 0
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int32
    return table.astype(dtype)[classes]


def median_spacing(paths: Sequence[str | Path]) -> tuple[float, float, float]:
    """The nnU-Net-style target spacing: per-axis median of the training images (in RAS order)."""
    import nibabel as nib

    sp = []
    for p in paths:
        img = nib.as_closest_canonical(load_volume(p))
        sp.append(img.header.get_zooms()[:3])
    return tuple(float(v) for v in np.median(np.asarray(sp, dtype=float), axis=0))
