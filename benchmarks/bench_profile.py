"""Where a training step's time goes, and how far it runs from the machine's peak: ERM and MaskGen.

On the demo's phantom and network (or the sizes given), for each method in one process:
- per step: waiting for the data loader, the stable extractor, forward + backward + optimizer (median of
  ``--steps`` timed steps after ``--warmup``); augmentation of one sample timed apart, in this process;
- ``torch.profiler`` over the timed steps: self CPU time by operator group (convolution forward and
  backward, normalisation, the extractor, the rest);
- ``torch.utils.flop_counter`` on one step (forward and backward): FLOP per step and the achieved GFLOP/s
  against the peak of this CPU (cores x clock x FP32 FLOP per cycle of its widest vector unit, read from
  /proc/cpuinfo: AVX-512 64, AVX2+FMA 32, else 8; an upper bound no real code reaches);
- one validation pass (sliding window over the validation volumes).

    python benchmarks/bench_profile.py --json docs/results/bench_profile_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from maskgen.data.augment import build_augmentation
from maskgen.data.phantom import generate_phantom
from maskgen.data.sampling import PatchSampler
from maskgen.runtime.config import TrainConfig
from maskgen.training.trainer import Trainer


def cpu_peak_gflops() -> dict:
    """Nominal FP32 peak of the cores this process may use (an upper bound, stated with its inputs)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    mhz = [float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    per_cycle = 64 if "avx512f" in flags else 32 if ("avx2" in flags and "fma" in flags) else 8
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ghz = (max(mhz) / 1000) if mhz else float("nan")
    return {"model": model, "cores": cores, "ghz": ghz, "fp32_flop_per_cycle": per_cycle,
            "peak_gflops": cores * ghz * per_cycle}


def group(name: str) -> str:
    n = name.lower()
    if "extractor" in n:
        return "extractor (region)"
    if "conv" in n and "backward" in n:
        return "convolution backward"
    if "conv" in n:
        return "convolution forward"
    if "norm" in n:
        return "normalisation"
    return "other"


def profile_method(method: str, args, data: Path, out: Path) -> dict:
    cfg = TrainConfig(dataset=str(data), out=str(out / method), method=method, splits=str(data / "splits.csv"),
                      steps=args.warmup + args.steps, batch_size=args.batch, patch_size=[args.patch] * 3,
                      spacing=[args.spacing] * 3, base_width=args.base_width, n_poolings=args.n_poolings,
                      lr=3e-3, num_workers=args.workers, device="cpu", val_every=10**9)
    tr = Trainer(cfg, progress=False)
    tr.setup()  # data, extractor, method, optimizer: what run() builds before its loop
    aug = build_augmentation(cfg.aug_prob, flips=cfg.flips)
    sampler = PatchSampler(tr.train_vols, cfg.patch_size, aug, fg_fraction=cfg.fg_fraction, seed=0)
    rng = __import__("numpy").random.default_rng(0)
    t = time.perf_counter()
    for _ in range(20):
        sampler.sample(rng)
    augment_ms = (time.perf_counter() - t) / 20 * 1000
    loader = DataLoader(sampler, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                        persistent_workers=cfg.num_workers > 0)
    it = iter(loader)
    tr.method.train()
    uses = tr.extractor is not None and tr.method.uses_features

    def step(timings: dict | None = None) -> None:
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        image, target = batch["image"], batch["label"].long()
        with record_function("extractor"):
            feats = tr.extractor(image) if uses else None
        t2 = time.perf_counter()
        loss, _ = tr.step_module(image, feats, target)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tr.optimizer.step()
        t3 = time.perf_counter()
        if timings is not None:
            timings["data_wait"].append(t1 - t0)
            timings["extractor"].append(t2 - t1)
            timings["network"].append(t3 - t2)

    for _ in range(args.warmup):
        step()
    timings: dict[str, list[float]] = defaultdict(list)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step(timings)
    by_group: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        by_group[group(ev.key)] += ev.self_cpu_time_total / 1e6 / args.steps
    # the region's own self time is tiny: its children are what it costs, so count it from the timings
    by_group["extractor (region)"] = statistics.median(timings["extractor"])
    flops = FlopCounterMode(display=False)
    with flops:
        step()
    total = statistics.median([sum(v) for v in zip(*timings.values())])
    compute = statistics.median([a + b for a, b in zip(timings["extractor"], timings["network"])])
    t = time.perf_counter()
    tr.method.eval()
    tr.validate()
    val_s = time.perf_counter() - t
    return {
        "method": method,
        "step_s": total,
        "data_wait_s": statistics.median(timings["data_wait"]),
        "data_wait_share": statistics.median(timings["data_wait"]) / total,
        "extractor_s": statistics.median(timings["extractor"]),
        "network_s": statistics.median(timings["network"]),
        "augment_ms_per_sample_in_process": augment_ms,
        "profiler_self_cpu_s_per_step": dict(by_group),
        "gflop_per_step": flops.get_total_flops() / 1e9,
        "achieved_gflops": flops.get_total_flops() / 1e9 / compute,
        "validation_pass_s": val_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, default=64)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--base-width", type=int, default=8)
    ap.add_argument("--n-poolings", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--methods", nargs="+", default=["erm", "maskgen"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = generate_phantom(Path(tmp) / "phantom", n_train=8, n_val=2, n_test=0, shape=(args.shape,) * 3,
                                spacing=(args.spacing,) * 3, seed=1234, progress=False)
        rows = [profile_method(m, args, data, Path(tmp)) for m in args.methods]
    result = {"machine": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": cpu_peak_gflops(), "settings": vars(args), "methods": rows}
    peak = result["cpu"]["peak_gflops"]
    for r in rows:
        print(f"{r['method']:8s} step {r['step_s']:.3f} s (data wait {100 * r['data_wait_share']:.1f} %, extractor "
              f"{r['extractor_s']:.3f} s, network {r['network_s']:.3f} s)  {r['gflop_per_step']:.1f} GFLOP/step  "
              f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['achieved_gflops'] / peak:.1f} % of peak {peak:.0f}  "
              f"validation {r['validation_pass_s']:.1f} s")
        print("          profiler (s/step): " + ", ".join(f"{k} {v:.3f}" for k, v in
                                                        sorted(r["profiler_self_cpu_s_per_step"].items())))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
