"""Peak memory of a sliding-window inferer alone, against the size of its output (the probabilities).

A network-free predictor (the window repeated into ``--classes`` channels) over a random volume, so what is
measured is the inferer's own buffers: output, accumulator, weights and what it allocates besides.
``monai``: MONAI's sliding_window_inference then a softmax in place; ``streamed``: maskgen's
(maskgen.runtime.streaming_windows, what prediction and validation use). One inferer per process:

    OMP_NUM_THREADS=1 python benchmarks/bench_sliding_memory.py --shape 256 256 150 --classes 16 --inferer monai
    OMP_NUM_THREADS=1 python benchmarks/bench_sliding_memory.py --shape 256 256 150 --classes 16 --inferer streamed
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from monai.inferers import sliding_window_inference

from maskgen.runtime.streaming_windows import streamed_sliding_window


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 150])
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--roi", type=int, default=128)
    ap.add_argument("--inferer", choices=["monai", "streamed"], default="streamed")
    args = ap.parse_args()
    x = torch.rand(1, 1, *args.shape)
    before = peak_gb()
    def net(w):
        return w.repeat(1, args.classes, 1, 1, 1)

    t0 = time.time()
    if args.inferer == "monai":
        out = sliding_window_inference(x, (args.roi,) * 3, 2, net, overlap=0.5, mode="gaussian")[0]
        for i in range(0, out.shape[1], 16):  # softmax in place, a few slices at a time
            out[:, i:i + 16] = torch.softmax(out[:, i:i + 16], dim=0)
    else:
        out = streamed_sliding_window(x, (args.roi,) * 3, net, overlap=0.5, sw_batch_size=2)
    seconds = time.time() - t0
    grown = peak_gb() - before
    size = out.numel() * out.element_size() / 1024 ** 3
    print(f"{args.inferer}: output {size:.2f} GB; peak RSS grew by {grown:.2f} GB during the inferer "
          f"({grown / size:.2f} x the output); {seconds:.1f} s")


if __name__ == "__main__":
    main()
