"""One MaskGen training step (MIND-SSC + the demo's width-8 UNet, 24^3 crops, batch 4, one thread): plain tensor
input against MetaTensor input, interleaved in one process; median of 6 timed steps after 2 warm-up pairs.

    python benchmarks/bench_metatensor_step.py
"""

import statistics
import time

import torch
from monai.data import MetaTensor

from maskgen.extractors import build_extractor
from maskgen.models.unet import UNet


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = UNet(in_channels=13, out_channels=5, base_width=8, n_poolings=3).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    x0, y = torch.rand(4, 1, 24, 24, 24), torch.randint(0, 5, (4, 24, 24, 24))
    ext = build_extractor("mind")

    def step(x: torch.Tensor) -> None:
        out = net(torch.cat([x, ext(x)], 1))
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    times: dict[str, list[float]] = {"plain": [], "meta": []}
    for _ in range(8):
        for kind in times:
            x = x0 if kind == "plain" else MetaTensor(x0)
            t = time.perf_counter()
            step(x)
            times[kind].append(time.perf_counter() - t)
    for kind, v in times.items():
        print(f"{kind}: {statistics.median(v[2:]):.3f} s per step")


if __name__ == "__main__":
    main()
