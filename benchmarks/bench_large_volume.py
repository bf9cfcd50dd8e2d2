"""Peak memory and time of `maskgen predict` on a CT-sized volume (512 x 512 x 300) with 16 classes.

Builds a 16-class run (an ERM width-8 UNet trained for one step on a small synthetic dataset at the big
volume's spacing, so the volume is not resampled: the worst case, every voxel predicted), writes one random
512 x 512 x 300 volume, then runs `maskgen predict` in a fresh process for each mode and reads its peak
resident memory (getrusage of the child): the default (no probabilities kept: classes resampled one at a
time into a running argmax) and `--save-probabilities` (all 16 classes on the input grid, and written).

    python benchmarks/bench_large_volume.py --grids same flipped --modes lean --json docs/results/bench_large_volume_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np


def small_dataset(root: Path, n_classes: int, spacing: tuple[float, ...]) -> Path:
    rng = np.random.default_rng(0)
    aff = np.diag([*spacing, 1.0])
    for split in ("Tr", "Val"):
        (root / f"images{split}").mkdir(parents=True)
        (root / f"labels{split}").mkdir(parents=True)
        for i in range(2 if split == "Tr" else 1):
            lab = rng.integers(0, n_classes, (40, 40, 40)).astype(np.uint8)
            img = (lab * 10 + rng.normal(0, 3, lab.shape)).astype(np.float32)
            nib.save(nib.Nifti1Image(img, aff), root / f"images{split}" / f"c{split}{i}_0000.nii.gz")
            nib.save(nib.Nifti1Image(lab, aff), root / f"labels{split}" / f"c{split}{i}.nii.gz")
    labels = {"background": 0, **{f"class{k}": k for k in range(1, n_classes)}}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                   "file_ending": ".nii.gz", "numTraining": 2}))
    return root


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one child process (run alone, so RUSAGE_CHILDREN is its own)."""
    code = ("import resource, subprocess, sys, time, json; t=time.time(); "
            "r=subprocess.run(sys.argv[1:]); "
            "print(json.dumps({'rc': r.returncode, 's': time.time()-t, "
            "'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{cmd} failed: {out.stderr[-2000:]}")
    return res["s"], res["kb"] / 1024 ** 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    ap.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5])
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--modes", nargs="+", default=["lean", "probabilities"])
    ap.add_argument("--grids", nargs="+", default=["same"], choices=["same", "flipped"],
                    help="same: a RAS volume at the run's spacing (no resampling); flipped: the same voxels stored "
                         "with the first two axes flipped (LPS, as DICOM-converted CTs often are), so the "
                         "probabilities are resampled back onto the input grid")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cli = [sys.executable, "-m", "maskgen.cli"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = small_dataset(tmp / "data", args.classes, tuple(args.spacing))
        run = tmp / "run"
        subprocess.run([*cli, "train", str(data), "--out", str(run), "--method", "erm", "--steps", "1",
                        "--val-every", "1", "--batch-size", "1", "--patch-size", *(["40"] * 3), "--base-width", "8",
                        "--n-poolings", "3", "--num-workers", "0", "--no-test",
                        "--spacing", *map(str, args.spacing)], check=True, capture_output=True)
        saved = (run / "config.yaml").read_text()
        cfg = saved.replace("- 40\n- 40\n- 40", f"- {args.patch}\n- {args.patch}\n- {args.patch}")
        if cfg == saved:
            raise RuntimeError("could not set the run's patch size in its config.yaml")
        (run / "config.yaml").write_text(cfg)  # a larger window for the big volume (weights are size-free)
        big = tmp / "big"
        big.mkdir()
        vol = np.random.default_rng(0).normal(0, 300, args.shape).astype(np.float32)
        for grid in args.grids:
            affine = np.diag([*args.spacing, 1.0])
            if grid == "flipped":
                affine = np.diag([-args.spacing[0], -args.spacing[1], args.spacing[2], 1.0])
                affine[:2, 3] = [(n - 1) * s for n, s in zip(args.shape[:2], args.spacing[:2])]
            (big / grid).mkdir()
            nib.save(nib.Nifti1Image(vol, affine), big / grid / "ct_0000.nii.gz")
        del vol
        for grid in args.grids:
            for mode in args.modes:
                out = tmp / f"pred_{grid}_{mode}"
                extra = ["--save-probabilities"] if mode == "probabilities" else []
                t0 = time.time()
                seconds, peak_gb = run_child([*cli, "predict", "--run", str(run), "--input", str(big / grid),
                                              "--output", str(out), "--device", "cpu", *extra])
                results.append({"grid": grid, "mode": mode, "seconds": seconds, "peak_rss_gb": peak_gb,
                                "wall": time.time() - t0})
                print(f"{grid:8s} {mode:14s} {seconds:7.1f} s  peak RSS {peak_gb:.2f} GB", flush=True)
    rec = {"machine": platform.machine(), "cpus": os.cpu_count(), "settings": vars(args), "results": results,
           "python": sys.version.split()[0], "self_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2) + "\n")


if __name__ == "__main__":
    main()
