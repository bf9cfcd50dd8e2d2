"""Every registered training method on the phantom benchmark under one budget, one seed set and one data
split, with a table of in-domain and unseen-domain Dice and training seconds per step relative to ERM.

    .venv/bin/python experiments/all_methods.py OUT_DIR [--steps 300] [--seeds 0] [--methods erm maskgen ...]
        [--base-width 16] [--lr 3e-3]   (defaults: the settings of `maskgen demo`)

Methods that fine-tune the extractor's own network (``finetune_*``) need a network extractor: they use
``--network-extractor`` (default: the project's shipped pretrained one), the others use MIND-SSC as in
``maskgen demo``. Rerunning continues unfinished arms and skips finished ones.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from maskgen.demo import FULL, run_demo
from maskgen.io import atomic_write_text
from maskgen.methods import METHODS


def seconds_per_step(log_csv: Path) -> float:
    """Median wall seconds of the training steps (validation steps excluded)."""
    with log_csv.open() as f:
        rows = [r for r in csv.DictReader(f) if not r["val_dice"]]
    return statistics.median(float(r["seconds"]) for r in rows) if rows else math.nan


def table(out: Path, methods: list[str], seeds: list[int]) -> str:
    from maskgen.data.nnunet import load_dataset

    results = json.loads((out / "results.json").read_text())
    spec = load_dataset(out / "phantom", splits_file=out / "phantom" / "splits.csv", progress=False)
    train_domains = sorted(spec.domains.get("train", []))
    sps = {}
    for m in methods:
        vals = [seconds_per_step(out / "runs" / f"{m}_seed{s}" / "log.csv") for s in seeds]
        sps[m] = statistics.mean(vals)
    domains = [d for d in ("T1w", "T2w", "PDw", "FLAIR", "CT") if d in results.get("erm", results[methods[0]])]

    def cell(m, d):
        st = results.get(m, {}).get(d)
        if not st or st["mean"] is None:
            return "-"
        return f"{st['mean']:.3f} ± {st['se']:.3f}" if st.get("se") is not None else f"{st['mean']:.3f}"

    head = ["method", "in-domain", "unseen (all)"] + [d + (" (train)" if d in train_domains else "") for d in domains]
    head += ["s/step", "vs ERM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        rel = f"{100 * (sps[m] / sps['erm'] - 1):+.0f} %" if "erm" in sps else "-"
        lines.append("| " + " | ".join([m, cell(m, "in-domain (all)"), cell(m, "unseen (all)")]
                                        + [cell(m, d) for d in domains] + [f"{sps[m]:.2f}", rel]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--base-width", type=int, default=FULL.base_width)
    ap.add_argument("--lr", type=float, default=FULL.lr)
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--network-extractor", default="maskgen-synth",
                    help="extractor for the finetune_* methods (needs a network)")
    ap.add_argument("--network-extractor-weights", default=None)
    args = ap.parse_args()
    methods = args.methods or sorted(METHODS, key=lambda m: (m != "erm", m != "maskgen", m))
    arms = {}
    for m in methods:
        cls = METHODS[m]
        hp = {"mask_rate": 0.5} if m == "maskgen" else {}
        if getattr(cls, "needs_extractor", False):
            arms[m] = (m, hp, {"extractor": args.network_extractor,
                               "extractor_weights": args.network_extractor_weights})
        else:
            arms[m] = (m, hp)
    FULL.arms = arms
    FULL.steps = args.steps
    FULL.val_every = args.val_every
    FULL.base_width = args.base_width
    FULL.lr = args.lr
    run_demo(args.out, seeds=args.seeds)
    md = table(Path(args.out), methods, args.seeds)
    atomic_write_text(Path(args.out) / "all_methods.md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
