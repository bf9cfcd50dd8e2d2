"""Time MIND-SSC: maskgen's implementation against the plain one it replaced, same volumes, one process.

The plain version (``mind_ssc_plain``: ``avg_pool3d`` box filter, the 12 pair differences concatenated,
channels reordered at the end) is what maskgen computed before; ``tests/test_extractors.py`` checks that
both give the same numbers.

    OMP_NUM_THREADS=1 python benchmarks/bench_mind.py --shape 96 96 96 --batch 2 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from maskgen.extractors.mind import _pairs, mind_ssc

REFERENCE_ORDER = [6, 8, 1, 11, 2, 10, 0, 7, 9, 4, 5, 3]


def mind_ssc_plain(img: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC written the obvious way; the reference for speed and for the numbers."""

    def box(x: torch.Tensor) -> torch.Tensor:
        for axis in range(3):
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
            ks = [1, 1, 1]
            ks[axis] = 2 * radius + 1
            x = F.avg_pool3d(F.pad(x, pad, mode="replicate"), tuple(ks), stride=1)
        return x

    shift1, shift2 = _pairs()
    d, size = dilation, img.shape[2:]
    padded = F.pad(img, [d] * 6, mode="replicate")

    def view(s: torch.Tensor) -> torch.Tensor:
        o = [int(v) * d for v in s]
        return padded[:, :, o[0] : o[0] + size[0], o[1] : o[1] + size[1], o[2] : o[2] + size[2]]

    ssd = box(torch.cat([view(a) - view(b) for a, b in zip(shift1, shift2)], dim=1) ** 2)
    mind = ssd - ssd.min(dim=1, keepdim=True).values
    var = mind.mean(dim=1, keepdim=True)
    mean_var = var.mean(dim=(1, 2, 3, 4), keepdim=True)
    var = torch.maximum(torch.minimum(var, mean_var * 1000), mean_var * 0.001)
    return torch.exp(-mind / (var + 1e-12))[:, REFERENCE_ORDER]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    x = torch.rand(args.batch, 1, *args.shape, generator=torch.Generator().manual_seed(0))
    impls = {"maskgen": mind_ssc, "plain": mind_ssc_plain}
    times: dict[str, list[float]] = {k: [] for k in impls}
    for f in impls.values():
        f(x)  # warm-up
    for _ in range(args.repeats):  # interleaved, so load drift hits both alike
        for name, f in impls.items():
            t = time.perf_counter()
            f(x)
            times[name].append(time.perf_counter() - t)
    diff = float((mind_ssc(x) - mind_ssc_plain(x)).abs().max())
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": platform.machine(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "settings": vars(args), "seconds": {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in times.items()},
        "speedup": med["plain"] / med["maskgen"], "max_abs_difference": diff,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
