"""Gaussian-blended sliding windows that stream along one axis, so a large volume needs one window's depth of
accumulator instead of the whole volume's logits.

MONAI's ``sliding_window_inference`` keeps the blended logits of the whole volume in float32 (16 classes of
512 x 512 x 300: 5 GB; its RSS grew 5.5 GB in ``benchmarks/bench_sliding_memory.py``), so what follows it
(probabilities, their float16 copy) comes on top of that. Here the windows are taken in order of their start along the longest axis (relative to the
window): before the windows starting at ``s`` run, no later window touches the slices below ``s``, so those
slices are final: they are divided by their weight, turned into probabilities and handed out. The
accumulator holds one window's depth along that axis. The windows, their Gaussian weights and the padding of
a volume smaller than the window are MONAI's (``dense_patch_slices``, ``compute_importance_map``); the
blend is the same sum of weighted logits over the sum of weights, so the result equals MONAI's to float
rounding (``tests/test_streaming_windows.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices


def scan_interval(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's window step per axis (``monai.inferers.utils._get_scan_interval``, private there)."""
    return tuple(int(r) if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(image_size, roi_size))


def stream_axis(image_size: Sequence[int], roi_size: Sequence[int]) -> int:
    """The spatial axis along which streaming saves most: the one longest relative to the window."""
    return max(range(len(image_size)), key=lambda a: (image_size[a] / roi_size[a], -a))


def _along_axis(window: Sequence[slice], axis: int, origin: int) -> tuple[slice, ...]:
    """``window`` with its ``axis`` slice moved to start from ``origin``."""
    local = list(window)
    local[axis] = slice(window[axis].start - origin, window[axis].stop - origin)
    return tuple(local)


@torch.no_grad()
def streamed_sliding_window(
    inputs: torch.Tensor,
    roi_size: Sequence[int],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    sigma_scale: float = 0.125,
    out_dtype: torch.dtype = torch.float32,
    slab_channels: Callable[[int, int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Softmax probabilities (C, D, H, W) on the CPU of ``predictor``'s Gaussian-blended logits over the
    windows of ``inputs`` (1, C_in, D, H, W), accumulated in float32 on ``inputs``' device and stored as
    ``out_dtype`` (float16 halves what the volume's probabilities take, as nnU-Net v2 keeps its logits).

    ``slab_channels(axis, start, stop)``: more input channels, (1, C_extra, ...) over ``[start, stop)`` along
    the stream axis and the whole of the others (precomputed stable features, a slab at a time); asked once
    per window start, in increasing order, and appended to each window's ``inputs``. Volumes at least as
    large as the window only: the padding of smaller ones is not applied to them."""
    if inputs.ndim != 5 or inputs.shape[0] != 1:
        raise ValueError(f"expected one volume (1, C, D, H, W), got shape {tuple(inputs.shape)}")
    roi = tuple(int(r) for r in roi_size)
    size = tuple(int(s) for s in inputs.shape[2:])
    if slab_channels is not None and any(s < r for s, r in zip(size, roi)):
        raise ValueError(f"slab channels need a volume at least as large as the window: {size} < {roi}")
    pad = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(size, roi)]
    if any(p for pair in pad for p in pair):  # MONAI's symmetric zero padding of a volume smaller than the window
        inputs = F.pad(inputs, [p for pair in reversed(pad) for p in pair])
    padded = tuple(int(s) for s in inputs.shape[2:])
    axis = stream_axis(padded, roi)
    windows = dense_patch_slices(padded, roi, scan_interval(padded, roi, overlap))
    windows = sorted(windows, key=lambda w: w[axis].start)  # stable: MONAI's order within each start
    weight = compute_importance_map(roi, mode="gaussian", sigma_scale=sigma_scale, device=inputs.device,
                                    dtype=torch.float32)[None]  # (1, *roi)
    depth = roi[axis]
    buffer_shape = list(padded)
    buffer_shape[axis] = depth
    acc, count, out = None, torch.zeros([1, *buffer_shape], device=inputs.device), None
    lo = 0  # the first slice (along ``axis``) that is not final yet; the buffers start there

    def along(t: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return t.narrow(axis + 1, start, stop - start)

    def finish(stop: int) -> None:
        """Slices [lo, stop) are final: blend, softmax, copy out, shift the buffers down."""
        nonlocal lo
        n = stop - lo
        if n <= 0:
            return
        block = along(acc, 0, n).div_(along(count, 0, n))  # in place: no second copy of the block
        block.sub_(block.amax(0, keepdim=True)).exp_()
        block.div_(block.sum(0, keepdim=True))
        along(out, lo, stop).copy_(block)
        keep = depth - n
        for j in range(keep):  # slice by slice, so source and destination never overlap
            along(acc, j, j + 1).copy_(along(acc, n + j, n + j + 1))
            along(count, j, j + 1).copy_(along(count, n + j, n + j + 1))
        along(acc, keep, depth).zero_()
        along(count, keep, depth).zero_()
        lo = stop

    for start, group in groupby(windows, key=lambda w: w[axis].start):
        finish(start)
        group = list(group)
        slab = slab_channels(axis, start, start + depth) if slab_channels is not None else None
        for i in range(0, len(group), sw_batch_size):
            batch = group[i:i + sw_batch_size]
            if slab is None:
                x = torch.cat([inputs[(slice(None), slice(None), *w)] for w in batch])
            else:  # the slab starts at ``start`` along the axis and spans the window's depth
                x = torch.cat([torch.cat([inputs[(slice(None), slice(None), *w)],
                                          slab[(slice(None), slice(None), *_along_axis(w, axis, start))]], dim=1)
                               for w in batch])
            logits = predictor(x).float().to(inputs.device)
            if acc is None:
                acc = torch.zeros([logits.shape[1], *buffer_shape], device=inputs.device)
                out = torch.empty([logits.shape[1], *padded], dtype=out_dtype)
            for w, y in zip(batch, logits):
                local = _along_axis(w, axis, lo)
                acc[(slice(None), *local)] += y * weight
                count[(slice(None), *local)] += weight
            del logits, x
    finish(padded[axis])
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pad, size))
    return out[(slice(None), *crop)] if any(p for pair in pad for p in pair) else out
