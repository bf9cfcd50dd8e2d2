"""Peak memory and time of putting a prediction back onto the input's grid: the argmax of 16 float16 class
probabilities resampled class by class (what ``maskgen predict`` does without ``--save-probabilities``).

``--grid flipped``: the input stores the run's grid with x and y flipped (LPS, as DICOM-converted CTs often
are); ``--grid finer``: the input is finer than the run's spacing (0.8 x 0.8 x 1.5 mm against 1.5 mm), the
probabilities are resampled up. ``--resampler monai``: MONAI's SpatialResample over the whole volume at once
(maskgen before slabs); ``slabs``: maskgen.inference.input_grid (slabs, and an exact copy for flips).
One setting per process, so each peak is its own:

    OMP_NUM_THREADS=1 python benchmarks/bench_resample_memory.py --grid flipped --resampler monai
    OMP_NUM_THREADS=1 python benchmarks/bench_resample_memory.py --grid flipped --resampler slabs
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from types import SimpleNamespace

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from maskgen.inference.input_grid import argmax_on_input_grid


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def monai_argmax(probs, affine, original):
    """The whole-volume resampling, class by class (maskgen's lean path before slabs)."""
    best_value, best_class = None, None
    for c in range(probs.shape[0]):
        value = torch.as_tensor(SpatialResample(mode="bilinear", padding_mode="border")(
            MetaTensor(probs[c:c + 1].float(), affine=torch.as_tensor(affine)),
            dst_affine=torch.as_tensor(original.affine, dtype=torch.float64),
            spatial_size=original.shape[:3]))[0].clamp_min(0).numpy()
        if best_value is None:
            best_value, best_class = value, np.zeros(value.shape, np.uint8)
            continue
        better = value > best_value
        best_class[better] = c
        np.maximum(best_value, value, out=best_value)
    return best_class


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300], help="the input's grid")
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--grid", choices=["flipped", "finer"], default="flipped")
    ap.add_argument("--resampler", choices=["monai", "slabs"], default="slabs")
    ap.add_argument("--json", help="append the result to this JSON list")
    args = ap.parse_args()
    spacing = np.array([0.8, 0.8, 1.5])
    target = np.diag([*spacing, 1.0])
    if args.grid == "flipped":
        target = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        target[:2, 3] = [(n - 1) * s for n, s in zip(args.shape[:2], spacing[:2])]
        source_shape, source = tuple(args.shape), np.diag([*spacing, 1.0])
    else:
        source_shape = tuple(int(round(n * s / 1.5)) for n, s in zip(args.shape, spacing))
        source = np.diag([1.5, 1.5, 1.5, 1.0])
    original = SimpleNamespace(shape=tuple(args.shape), affine=target)  # only its grid is read
    gen = torch.Generator().manual_seed(0)
    probs = torch.empty(args.classes, *source_shape, dtype=torch.float16)
    for c in range(args.classes):
        probs[c] = torch.rand(source_shape, generator=gen).half()
    before = peak_gb()
    t0 = time.time()
    run = monai_argmax if args.resampler == "monai" else argmax_on_input_grid
    classes = run(probs, source, original)
    seconds = time.time() - t0
    result = {"grid": args.grid, "resampler": args.resampler, "shape": args.shape, "classes": args.classes,
              "probabilities_gb": probs.numel() * 2 / 1024 ** 3, "peak_rss_gb": peak_gb(),
              "grew_gb": peak_gb() - before, "seconds": seconds, "mask_checksum": int(classes.sum(dtype=np.int64))}
    print(json.dumps(result), flush=True)
    if args.json:
        try:
            with open(args.json) as f:
                rows = json.load(f)
        except FileNotFoundError:
            rows = []
        with open(args.json, "w") as f:
            json.dump(rows + [result], f, indent=1)


if __name__ == "__main__":
    main()
