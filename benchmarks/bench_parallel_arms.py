"""Two arms at once: one process per arm with its share of the threads, or one arm after the other with all.

`maskgen demo` trains its arms in parallel processes on a CPU because the demo's small 3D convolutions
scale poorly over threads. This measures that choice: the same training steps (the MaskGen method with
MIND-SSC features, on random patches) run (a) in one process with every thread, twice in a row, and (b) in
two processes at once with ``threads / 2`` each. The ratio of wall times is what to read.

    python benchmarks/bench_parallel_arms.py --steps 100 --json docs/results/bench_parallel_arms_cpu.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time


def train_steps(threads: int, steps: int, patch: int, batch: int, base_width: int, n_poolings: int) -> float:
    """Seconds for ``steps`` MaskGen training steps (features included) after two warm-up steps."""
    import torch
    from monai.losses import DiceCELoss

    from maskgen.device import place_model
    from maskgen.extractors import build_extractor
    from maskgen.methods import build_method

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ext = build_extractor("mind")
    net = {"base_width": base_width, "n_poolings": n_poolings}
    m = place_model(build_method("maskgen", image_channels=1, feature_channels=ext.out_channels, n_classes=5,
                                 network=net), torch.device("cpu"))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    crit = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    x = torch.rand(batch, 1, patch, patch, patch)
    y = torch.randint(0, 5, (batch, 1, patch, patch, patch))
    m.train()
    t = 0.0
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        loss, _ = m.training_loss(x, ext(x), y, crit)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base-width", type=int, default=8)
    ap.add_argument("--n-poolings", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per arm")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    shape = (args.steps, args.patch, args.batch, args.base_width, args.n_poolings)

    t0 = time.perf_counter()
    one_each = [train_steps(args.threads, *shape) for _ in range(2)]  # one arm after the other
    serial = time.perf_counter() - t0
    half = max(1, args.threads // 2)
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        parallel_each = pool.starmap(train_steps, [(half, *shape)] * 2)
    parallel = time.perf_counter() - t0  # includes the two processes' start-up (torch import)
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "settings": vars(args),
        "serial": {"threads": args.threads, "wall_s": serial, "steps_s_per_arm": [s / args.steps for s in one_each]},
        "parallel": {"threads_each": half, "wall_s": parallel,
                     "steps_s_per_arm": [s / args.steps for s in parallel_each]},
        "serial_over_parallel": serial / parallel,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        from maskgen.io import atomic_write_json

        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
