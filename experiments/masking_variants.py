"""The demo's benchmark with a third arm: MaskGen with plain zero masking (no 1/(1-p) rescale).

Same phantom, seeds and budget as `maskgen demo`; the first two arms are exactly the demo's runs.

    .venv/bin/python experiments/masking_variants.py OUT_DIR [--seeds 0 1 2]
"""

import argparse

from maskgen.demo import FULL, run_demo

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--seeds", type=int, nargs="+", default=[0])
args = ap.parse_args()
FULL.arms = {
    "erm": ("erm", {}),
    "maskgen": ("maskgen", {"mask_rate": 0.5}),
    "maskgen_zero": ("maskgen", {"mask_rate": 0.5, "mask_mode": "zero"}),
}
run_demo(args.out, seeds=args.seeds)
