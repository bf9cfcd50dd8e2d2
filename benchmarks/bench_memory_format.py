"""Time a training step and one sliding-window inference with the default memory layout against the
channels-last layout that ``place_model`` uses on CPU; both in one process, interleaved, same inputs.

    python benchmarks/bench_memory_format.py --patch 32 --batch 4 --base-width 16 --n-poolings 3 --in-channels 13
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from monai.losses import DiceCELoss

from maskgen.device import place_model, resolve_device
from maskgen.methods import build_method
from maskgen.runtime.sliding import sliding_window_probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base-width", type=int, default=16)
    ap.add_argument("--n-poolings", type=int, default=3)
    ap.add_argument("--in-channels", type=int, default=13, help="1 image channel + feature channels")
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--volume", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = resolve_device("cpu")
    torch.manual_seed(0)
    net = {"base_width": args.base_width, "n_poolings": args.n_poolings}
    models = {}
    for layout in ("default", "channels_last"):
        torch.manual_seed(0)
        m = build_method("concat", image_channels=1, feature_channels=args.in_channels - 1, n_classes=args.classes,
                         network=net)
        models[layout] = place_model(m, device) if layout == "channels_last" else m
    opts = {k: torch.optim.AdamW(m.parameters(), lr=2e-4) for k, m in models.items()}
    crit = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    p = args.patch
    x = torch.rand(args.batch, 1, p, p, p)
    f = torch.randn(args.batch, args.in_channels - 1, p, p, p)
    y = torch.randint(0, args.classes, (args.batch, 1, p, p, p))
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(2 + args.repeats):
        for k in models if i % 2 == 0 else reversed(list(models)):
            m = models[k].train()
            t = time.perf_counter()
            loss, _ = m.training_loss(x, f, y, crit)
            opts[k].zero_grad(set_to_none=True)
            loss.backward()
            opts[k].step()
            if i >= 2:
                times[k].append(time.perf_counter() - t)

    class Feats(torch.nn.Module):  # stand-in extractor so inference times only the network
        out_channels = args.in_channels - 1

        def forward(self, img):
            return img.expand(-1, self.out_channels, -1, -1, -1)

    vol = torch.rand(1, args.volume, args.volume, args.volume)
    inf: dict[str, list[float]] = {k: [] for k in models}
    for i in range(1 + max(1, args.repeats // 3)):
        for k, m in models.items():
            t = time.perf_counter()
            sliding_window_probs(m.eval(), Feats(), vol, (p, p, p), 0.5, device)
            if i > 0:
                inf[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    imed = {k: statistics.median(v) for k, v in inf.items()}
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "settings": vars(args),
        "train_step_s": med, "inference_s": imed,
        "train_speedup": med["default"] / med["channels_last"],
        "inference_speedup": imed["default"] / imed["channels_last"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        from maskgen.io import atomic_write_json

        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
