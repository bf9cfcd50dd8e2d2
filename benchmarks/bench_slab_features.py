"""Peak memory and time of MaskGen's sliding-window inference by feature pass, each in a fresh process.

``window``: MIND-SSC on every window; ``volume``: once per voxel, slab by slab with a halo
(maskgen/runtime/slab_features.py); ``volume-whole``: once, on the whole volume held in memory (what
``volume`` did before slabs; the same pass with the extractor's receptive radius hidden). One random volume,
an untrained MaskGen UNet (the timing and memory do not depend on the weights). The masks of ``volume`` and
``volume-whole`` are compared voxel by voxel.

    OMP_NUM_THREADS=1 python benchmarks/bench_slab_features.py --shape 256 256 192 --json OUT.json

``--interleave N`` times instead ``volume`` in slabs against the whole-volume pass in one process, alternating,
N times each (a speed ratio that machine load hits alike; no memory figures):

    OMP_NUM_THREADS=1 python benchmarks/bench_slab_features.py --shape 128 128 96 --patch 48 --interleave 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PASSES = ("window", "volume", "volume-whole")


def _setup(args: argparse.Namespace):
    import torch

    from maskgen.extractors import build_extractor
    from maskgen.methods import build_method

    torch.manual_seed(0)
    ext = build_extractor("mind")
    method = build_method("maskgen", image_channels=1, feature_channels=ext.out_channels, n_classes=args.classes,
                          network={"base_width": args.base_width, "n_poolings": args.n_poolings}).eval()
    image = torch.rand(1, *args.shape, generator=torch.Generator().manual_seed(1))
    return ext, method, image


def _predict(args: argparse.Namespace, ext, method, image, feature_pass: str):
    """(probabilities, seconds) of one pass; ``volume-whole`` hides the receptive radius."""
    import torch

    from maskgen.runtime.sliding import sliding_window_probs

    radius = ext.receptive_radius
    ext.receptive_radius = None if feature_pass == "volume-whole" else radius
    fp = "volume" if feature_pass == "volume-whole" else feature_pass
    try:
        t0 = time.perf_counter()
        probs = sliding_window_probs(method, ext, image, (args.patch,) * 3, 0.5, feature_pass=fp,
                                     out_dtype=torch.float16)
        return probs, time.perf_counter() - t0
    finally:
        ext.receptive_radius = radius


def child(args: argparse.Namespace) -> None:
    import torch

    probs, seconds = _predict(args, *_setup(args), args.feature_pass)
    np.save(args.mask_out, probs.argmax(0).to(torch.uint8).numpy())
    print(json.dumps({"seconds": seconds}))


def interleaved(args: argparse.Namespace) -> dict:
    ext, method, image = _setup(args)
    times: dict[str, list[float]] = {"volume": [], "volume-whole": []}
    for _ in range(args.interleave):
        for fp in times:
            times[fp].append(round(_predict(args, ext, method, image, fp)[1], 2))
    for fp, t in times.items():
        print(fp, t, flush=True)
    return {"interleaved_seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 192])
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--base-width", type=int, default=8)
    ap.add_argument("--n-poolings", type=int, default=3)
    ap.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    ap.add_argument("--interleave", type=int, default=0, help="time volume vs volume-whole N times in one process")
    ap.add_argument("--json", default=None)
    ap.add_argument("--feature-pass", help=argparse.SUPPRESS)
    ap.add_argument("--mask-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.feature_pass:
        return child(args)
    common = ["--shape", *map(str, args.shape), "--patch", str(args.patch), "--classes", str(args.classes),
              "--base-width", str(args.base_width), "--n-poolings", str(args.n_poolings)]
    result = {"command": "python benchmarks/bench_slab_features.py " + " ".join(common),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "passes": {}}
    if args.interleave:
        result["command"] += f" --interleave {args.interleave}"
        result.update(interleaved(args))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return
    masks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fp in args.passes:
            mask, log = Path(tmp) / f"{fp}.npy", Path(tmp) / f"{fp}.json"
            with open(log, "w") as stdout:
                proc = subprocess.Popen([sys.executable, __file__, *common, "--feature-pass", fp,
                                         "--mask-out", str(mask)], stdout=stdout)
                _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
            if status != 0:
                raise SystemExit(f"{fp}: the measuring process failed (status {status})")
            peak_kb = usage.ru_maxrss
            seconds = json.loads(log.read_text().strip().splitlines()[-1])["seconds"]
            result["passes"][fp] = {"seconds": round(seconds, 2), "peak_rss_gb": round(peak_kb / 1024**2, 3)}
            masks[fp] = np.load(mask)
            print(fp, result["passes"][fp], flush=True)
    if "volume" in masks and "volume-whole" in masks:
        result["volume_vs_whole_mask_agreement"] = float((masks["volume"] == masks["volume-whole"]).mean())
        print("volume vs volume-whole: masks agree on", result["volume_vs_whole_mask_agreement"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
