"""Figures for results: per-domain Dice bars, segmentation overlays, training curves.

Figures are drawn on the Agg canvas directly (no pyplot), so plotting never needs a display and
never changes the global matplotlib backend of the caller; each PNG is written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import ListedColormap

from maskgen.figures import new_figure as _new_figure
from maskgen.figures import save_figure as _save
from maskgen.metrics import dice_per_class

IN_DOMAIN_SUFFIX = " (in-domain)"


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# ---------------------------------------------------------------------------------------- domains
def plot_domain_bars(
    results: dict[str, dict[str, tuple[float, float]]],
    path: str | Path,
    title: str = "",
    in_domain: Sequence[str] = (),
) -> Path:
    """Grouped bars of mean Dice ± SE: one group per domain, one bar per method.

    ``results[method][domain] = (mean_dice, se)``; a missing domain or a None/NaN SE draws no bar
    or no error bar. Domains in ``in_domain`` are labelled and shaded, because in-domain scores
    are not evidence of generalisation and should not be read alongside the others unmarked.
    """
    methods = list(results)
    domains: list[str] = []
    for per_domain in results.values():
        domains += [d for d in per_domain if d not in domains]
    if not methods or not domains:
        raise ValueError("plot_domain_bars: results is empty")
    in_domain = set(in_domain)
    fig = _new_figure((max(4.0, 2.2 + 0.45 * len(domains) * (len(methods) + 1)), 4.0))
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    x = np.arange(len(domains))
    for i, m in enumerate(methods):
        means, errs = [], []
        for d in domains:
            mean, se = results[m].get(d, (None, None))
            means.append(mean if _finite(mean) else np.nan)
            errs.append(se if _finite(se) else np.nan)
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=errs, capsize=3, label=m)
    for j, d in enumerate(domains):
        if d in in_domain:
            ax.axvspan(j - 0.5, j + 0.5, color="0.92", zorder=0)
    ax.set_xticks(x, [d + IN_DOMAIN_SUFFIX if d in in_domain else d for d in domains],
                  rotation=30 if len(domains) > 4 else 0, ha="right" if len(domains) > 4 else "center")
    ax.set_xlim(-0.5, len(domains) - 0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (mean ± SE)")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(fontsize="small", loc="outside right upper")  # outside: never hides a bar
    if title:
        ax.set_title(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- overlay
def most_foreground_slice(mask: np.ndarray, axis: int = 2) -> int:
    """Index along ``axis`` of the slice with the most foreground voxels (middle slice if none)."""
    mask = np.asarray(mask)
    axis = axis % mask.ndim
    counts = np.count_nonzero(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))
    return int(np.argmax(counts)) if counts.any() else mask.shape[axis] // 2


def _as_3d(a: np.ndarray, name: str) -> np.ndarray:
    """Drop trailing singleton axes (NIfTI files often carry a 4th of length 1)."""
    a = np.asarray(a)
    while a.ndim > 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise ValueError(f"plot_overlay expects 3D arrays, got {name} shape {a.shape}")
    return a


def _case_mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    labels = [int(v) for v in np.union1d(np.unique(pred), np.unique(ref)) if v != 0]
    vals = [v for v in dice_per_class(pred, ref, labels).values() if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def plot_overlay(
    image: np.ndarray,
    ground_truth: np.ndarray,
    predictions: dict[str, np.ndarray],
    path: str | Path,
    title: str = "",
    axis: int = 2,
    slice_index: int | None = None,
) -> Path:
    """One 2D slice: image, ground truth and each prediction, labels tinted over the grey image.

    The slice defaults to the one with the most ground-truth foreground, so the structures being
    compared are actually visible. Each prediction panel shows the case's 3D mean Dice.
    """
    image, ground_truth = _as_3d(image, "image"), _as_3d(ground_truth, "ground_truth")
    predictions = {name: _as_3d(p, name) for name, p in predictions.items()}
    for name, arr in [("ground_truth", ground_truth), *predictions.items()]:
        if arr.shape != image.shape:
            raise ValueError(f"{name} shape {arr.shape} differs from image shape {image.shape}")
    if slice_index is None:
        slice_index = most_foreground_slice(ground_truth, axis)
    if not 0 <= slice_index < image.shape[axis]:
        raise ValueError(f"slice_index {slice_index} outside 0..{image.shape[axis] - 1} along axis {axis}")

    def cut(a: np.ndarray) -> np.ndarray:
        # Transposed with origin="lower" so the first remaining axis runs left to right.
        return np.take(np.asarray(a), slice_index, axis=axis).T

    n_labels = int(max([ground_truth.max(), *(np.max(p) for p in predictions.values())], default=0))
    base = ListedColormap(
        [(0.89, 0.10, 0.11), (0.22, 0.49, 0.72), (0.30, 0.69, 0.29), (0.60, 0.31, 0.64), (1.0, 0.50, 0.0),
         (1.0, 1.0, 0.2), (0.65, 0.34, 0.16), (0.97, 0.51, 0.75), (0.0, 0.8, 0.8), (0.6, 0.6, 0.6)]
    )
    colours = ListedColormap([base(i % base.N) for i in range(max(n_labels, 1))])
    img2d = cut(image).astype(float)
    lo, hi = np.percentile(img2d, [1, 99]) if img2d.size else (0.0, 1.0)
    panels = [("image", None), ("ground truth", ground_truth)]
    panels += [(f"{name}\nmean Dice {_case_mean_dice(p, ground_truth):.3f}", p) for name, p in predictions.items()]
    fig = _new_figure((3.0 * len(panels), 3.4))
    for k, (label, seg) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(img2d, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower", interpolation="nearest")
        if seg is not None:
            s = cut(seg)
            ax.imshow(np.ma.masked_where(s <= 0, s), cmap=colours, vmin=0.5, vmax=max(n_labels, 1) + 0.5,
                      alpha=0.5, origin="lower", interpolation="nearest")
        ax.set_title(label, fontsize="small")
        ax.set_axis_off()
    fig.suptitle(f"{title + '  ' if title else ''}(axis {axis}, slice {slice_index})", fontsize="medium")
    return _save(fig, path)


# --------------------------------------------------------------------------------- training curves
