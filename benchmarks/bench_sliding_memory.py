"""Peak memory of MONAI's sliding_window_inference alone, against the size of its output.

A network-free predictor (the window repeated into ``--classes`` channels) over a random volume, so what is
measured is the inferer's own buffers: output, count map and what it allocates besides.

    OMP_NUM_THREADS=1 python benchmarks/bench_sliding_memory.py --shape 256 256 150 --classes 16
"""

from __future__ import annotations

import argparse
import resource

import torch
from monai.inferers import sliding_window_inference


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 150])
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--roi", type=int, default=128)
    args = ap.parse_args()
    x = torch.rand(1, 1, *args.shape)
    before = peak_gb()
    out = sliding_window_inference(x, (args.roi,) * 3, 2, lambda w: w.repeat(1, args.classes, 1, 1, 1),
                                   overlap=0.5, mode="gaussian")
    grown = peak_gb() - before
    size = out.numel() * out.element_size() / 1024 ** 3
    print(f"output {size:.2f} GB; peak RSS grew by {grown:.2f} GB during the inferer ({grown / size:.2f} x the output)")


if __name__ == "__main__":
    main()
