"""What the field uses to go faster, each measured as a ratio in one process: torch.compile (training step
and sliding-window inference), the sliding-window batch, bf16 autocast and pinned memory.

Each comparison interleaves its two variants on identical inputs (so load drifting on a shared machine
skews both alike) and reports the median ratio variant / baseline (below 1: faster). Settings default to
``configs/benchmark/phantom_cpu.yaml``'s (width-8 UNet, 3 poolings, patch 32^3, batch 4, MIND-SSC) and the
phantom's 64^3 volume. bf16 and pinned memory only mean something on a GPU; on a CPU they are reported as
skipped rather than measured.

    OMP_NUM_THREADS=1 python benchmarks/bench_options.py --json docs/results/bench_options_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
from monai.losses import DiceCELoss

from maskgen.device import place_model, resolve_device
from maskgen.extractors import build_extractor
from maskgen.methods import build_method
from maskgen.runtime.sliding import sliding_window_probs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(a: Callable[[], None], b: Callable[[], None], repeats: int, warmup: int,
                device: torch.device) -> dict[str, float]:
    """Median seconds of ``a`` and ``b`` run in turn (order alternating), and the median ratio b / a."""
    ta, tb = [], []
    for i in range(warmup + repeats):
        for name, fn in ((("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                (ta if name == "a" else tb).append(time.perf_counter() - t)
    ratios = [y / x for x, y in zip(ta, tb)]
    return {"baseline_s": statistics.median(ta), "variant_s": statistics.median(tb),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--volume", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base-width", type=int, default=8)
    ap.add_argument("--n-poolings", type=int, default=3)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--methods", nargs="+", default=["erm", "maskgen"])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip", nargs="*", default=[], choices=["compile", "sw_batch", "bf16", "pinned"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    ext = build_extractor("mind").to(device)
    crit = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)
    p = args.patch
    x = torch.rand(args.batch, 1, p, p, p, device=device)
    y = torch.randint(0, args.classes, (args.batch, 1, p, p, p), device=device)
    vol = torch.rand(1, args.volume, args.volume, args.volume)
    net = {"base_width": args.base_width, "n_poolings": args.n_poolings}
    results: dict[str, dict] = {}

    def fresh(name: str):
        torch.manual_seed(0)
        m = place_model(build_method(name, image_channels=1, feature_channels=ext.out_channels,
                                     n_classes=args.classes, network=net), device)
        return m, torch.optim.AdamW(m.parameters(), lr=2e-4, weight_decay=1e-5)

    def train_step(m, opt, bf16: bool = False) -> Callable[[], None]:
        def run() -> None:
            m.train()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                feats = ext(x) if m.uses_features else None
                loss, _ = m.training_loss(x, feats, y, crit)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    def inference(m, sw_batch: int = 2, amp: bool = False) -> Callable[[], None]:
        return lambda: sliding_window_probs(m, ext, vol, (p, p, p), 0.5, device, amp=amp, sw_batch_size=sw_batch)

    for name in args.methods:
        eager, opt = fresh(name)
        if "compile" not in args.skip:
            compiled, copt = fresh(name)
            compiled.network = torch.compile(compiled.network)
            t0 = time.perf_counter()
            train_step(compiled, copt)()  # the first call compiles
            compile_s = time.perf_counter() - t0
            results[f"{name}/compile/train_step"] = {**interleaved(train_step(eager, opt), train_step(compiled, copt),
                                                                   args.repeats, args.warmup, device),
                                                     "first_call_s": compile_s}
            results[f"{name}/compile/inference"] = interleaved(inference(eager), inference(compiled),
                                                               max(2, args.repeats // 2), 1, device)
            del compiled, copt
        if "sw_batch" not in args.skip:
            for b in (1, 4, 8):
                results[f"{name}/sw_batch_{b}_vs_2/inference"] = interleaved(
                    inference(eager, 2), inference(eager, b), max(2, args.repeats // 2), 1, device)
        if "bf16" not in args.skip:
            if device.type == "cuda":
                results[f"{name}/bf16/train_step"] = interleaved(train_step(eager, opt), train_step(eager, opt, True),
                                                                 args.repeats, args.warmup, device)
                results[f"{name}/bf16/inference"] = interleaved(inference(eager), inference(eager, amp=True),
                                                                max(2, args.repeats // 2), 1, device)
            else:
                results[f"{name}/bf16"] = {"skipped": "bf16 autocast is for GPUs; not measured on a CPU"}
    if "pinned" not in args.skip:
        if device.type == "cuda":
            host = torch.rand(args.batch, 1, p, p, p)
            pinned = host.pin_memory()
            results["pinned/host_to_device"] = interleaved(lambda: host.to(device, non_blocking=True),
                                                           lambda: pinned.to(device, non_blocking=True),
                                                           args.repeats * 5, args.warmup, device)
        else:
            results["pinned"] = {"skipped": "pinned memory speeds host-to-GPU copies; no GPU here"}
    rec = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "device": str(device),
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "settings": vars(args),
           "results": results}
    print(json.dumps(rec, indent=2))
    if args.json:
        from maskgen.io import atomic_write_json

        atomic_write_json(args.json, rec)


if __name__ == "__main__":
    main()
