"""Per-class overlap and surface-distance metrics for integer label maps.

Conventions (nnU-Net's, so numbers are comparable with published tables):

* Dice: a class absent from both prediction and reference gives ``NaN`` (there is nothing to
  score; callers exclude it from means); absent from exactly one gives ``0``.
* HD95 (millimetres, from the voxel spacing): both empty gives ``NaN``; exactly one empty gives
  ``inf``, because no finite distance exists. Summaries skip non-finite values in means and
  standard errors and report how many ``inf`` values were skipped, so a missed structure is
  visible rather than silently replaced by an arbitrary penalty.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np


def _check_shapes(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from reference shape {tuple(ref.shape)}")


def drop_ignored(pred: np.ndarray, ref: np.ndarray, ignore: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and reference with the reference's ``ignore`` voxels set to background in both, so they
    count for no class (nnU-Net's ignore label); unchanged when ``ignore`` is None."""
    if ignore is None:
        return pred, ref
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_shapes(pred, ref)
    keep = ref != ignore
    return np.where(keep, pred, 0), np.where(keep, ref, 0)


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice ``2|P∩R| / (|P|+|R|)`` for each label: NaN if absent from both, 0 if absent from one."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_shapes(pred, ref)
    out: dict[int, float] = {}
    for lab in labels:
        p = pred == lab
        r = ref == lab
        n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
        if n_p + n_r == 0:
            out[int(lab)] = math.nan
            continue
        inter = int(np.count_nonzero(p & r))
        out[int(lab)] = 2.0 * inter / (n_p + n_r)
    return out


def _bbox_slices(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels (clipped to the array).

    Cropping with a background margin leaves every surface voxel and distance unchanged and keeps
    MONAI's float copy of the volume small.
    """
    sl = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        sl.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + margin + 1, mask.shape[ax])))
    return tuple(sl)


def hd95_per_class(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float]
) -> dict[int, float]:
    """Symmetric 95th-percentile Hausdorff distance in mm per label, computed by MONAI.

    ``spacing`` is the voxel size along each array axis (same order as the array axes).
    Both empty gives NaN and exactly one empty gives ``inf`` (decided here explicitly: MONAI's own
    output for that case has changed between versions).
    """
    import torch
    from monai.metrics import compute_hausdorff_distance

    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_shapes(pred, ref)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} values for a {pred.ndim}-D array of shape {pred.shape}")
    out: dict[int, float] = {}
    for lab in labels:
        p = pred == lab
        r = ref == lab
        has_p, has_r = bool(p.any()), bool(r.any())
        if not has_p and not has_r:
            out[int(lab)] = math.nan
            continue
        if has_p != has_r:
            out[int(lab)] = math.inf
            continue
        sl = _bbox_slices(p | r)
        yp = torch.from_numpy(np.ascontiguousarray(p[sl]))[None, None]
        yr = torch.from_numpy(np.ascontiguousarray(r[sl]))[None, None]
        with warnings.catch_warnings():
            # MONAI emits a deprecation FutureWarning from inside its own code on every call.
            warnings.simplefilter("ignore", FutureWarning)
            hd = compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=spacing)
        out[int(lab)] = float(hd.reshape(-1)[0])
    return out


def confusion_per_class(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, dict[str, float]]:
    """nnU-Net's per-label metrics: ``Dice``, ``IoU`` (NaN when the label is in neither map), ``TP``, ``FP``,
    ``FN``, ``TN``, ``n_pred``, ``n_ref`` (voxel counts), so its summary.json keys can be written."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_shapes(pred, ref)
    out: dict[int, dict[str, float]] = {}
    for v in labels:
        p, r = pred == v, ref == v
        tp = int(np.count_nonzero(p & r))
        fp = int(np.count_nonzero(p & ~r))
        fn = int(np.count_nonzero(~p & r))
        tn = int(p.size - tp - fp - fn)
        union = tp + fp + fn
        out[int(v)] = {
            "Dice": 2 * tp / (2 * tp + fp + fn) if union else math.nan,
            "IoU": tp / union if union else math.nan,
            "FN": fn, "FP": fp, "TN": tn, "TP": tp, "n_pred": tp + fp, "n_ref": tp + fn,
        }  # fmt: skip
    return out


def surface_dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float],
                           tolerance_mm: float) -> dict[int, float]:
    """Normalised surface Dice (MONAI's ``compute_surface_dice``): the share of both boundaries lying within
    ``tolerance_mm`` of the other; NaN where a label is in neither map, 0 where it is in one only."""
    import torch
    from monai.metrics import compute_surface_dice

    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_shapes(pred, ref)
    labels = [int(v) for v in labels]

    def onehot(a: np.ndarray) -> torch.Tensor:
        chans = [np.isin(a, labels, invert=True)] + [a == v for v in labels]
        return torch.as_tensor(np.stack(chans)[None].astype(np.float32))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns for every empty class; NaN / 0 carry that here
        nsd = compute_surface_dice(onehot(pred), onehot(ref), [float(tolerance_mm)] * len(labels),
                                   include_background=False, spacing=tuple(float(s) for s in spacing))
    return {v: float(x) for v, x in zip(labels, nsd[0].tolist())}
