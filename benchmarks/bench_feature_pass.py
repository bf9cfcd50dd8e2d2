"""Stable features per sliding window or once per volume: test Dice and inference time, in one process.

For each run (a MaskGen run and, for the overhead ratio, an ERM run on the same data), every labelled
test case is predicted with each feature pass (``window``: the extractor on every window; ``volume``:
once per volume, each window normalised by its own statistics; ``volume-norm``: once, normalised over the
volume). Passes are interleaved per case so machine load drifts alike for all of them.

    python benchmarks/bench_feature_pass.py --runs RUN_MASKGEN RUN_ERM --json docs/results/bench_feature_pass_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from maskgen.data.volumes import load_volume
from maskgen.evaluation.evaluate import case_row
from maskgen.evaluation.testing import labelled_test_cases
from maskgen.inference.predict import Predictor
from maskgen.metrics import drop_ignored
from maskgen.runtime.sliding import FEATURE_PASSES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="run folders (methods with and without features)")
    ap.add_argument("--cases", type=int, default=None, help="only the first N test cases")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    result = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "command": "python benchmarks/bench_feature_pass.py "
              + " ".join(f"--runs {' '.join(args.runs)}".split()) + (f" --cases {args.cases}" if args.cases else ""),
              "runs": {}}
    for run in args.runs:
        preds = {fp: Predictor(run, device=args.device, feature_pass=fp) for fp in FEATURE_PASSES}
        base = preds["window"]
        passes = FEATURE_PASSES if base.method.uses_features else ("window",)
        cfg = base.cfg
        fg = {k: int(v) for k, v in (cfg.label_names or {}).items() if int(v) != 0 and int(v) != cfg.ignore_value}
        cases = labelled_test_cases(cfg, run)[: args.cases]
        seconds = {fp: [] for fp in passes}
        dice = {fp: [] for fp in passes}
        max_prob_diff = {fp: 0.0 for fp in passes}
        for case in cases:
            ref_img = load_volume(case.label)
            ref_probs = None
            for fp in passes:
                t = time.perf_counter()
                labels, probs, _ = preds[fp].predict_file(case.image)
                seconds[fp].append(time.perf_counter() - t)
                ref = np.asarray(ref_img.dataobj).reshape(labels.shape).astype(np.int64)
                scored, ref = drop_ignored(labels, ref, cfg.ignore_value)
                spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
                dice[fp].append(case_row(case.case_id, case.domain, scored, ref, spacing, fg, False)["mean_dice"])
                if ref_probs is None:
                    ref_probs = probs
                max_prob_diff[fp] = max(max_prob_diff[fp], float(np.abs(probs - ref_probs).max()))
        result["runs"][Path(run).name] = {
            "method": cfg.method, "cases": len(cases),
            "seconds_per_volume": {fp: statistics.median(v) for fp, v in seconds.items()},
            "mean_dice": {fp: float(np.nanmean(v)) for fp, v in dice.items()},
            "max_abs_probability_difference_to_window": max_prob_diff,
        }
    erm = [r for r in result["runs"].values() if len(r["seconds_per_volume"]) == 1]
    if erm:
        t_erm = erm[0]["seconds_per_volume"]["window"]
        for r in result["runs"].values():
            r["overhead_vs_image_only_pct"] = {fp: 100 * (t / t_erm - 1) for fp, t in r["seconds_per_volume"].items()}
    print(json.dumps(result, indent=2))
    if args.json:
        from maskgen.io import atomic_write_json

        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
