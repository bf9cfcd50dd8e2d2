"""One table and one bar chart from the ``results.csv`` of several demo folders trained on the same phantom,
seeds and budget (e.g. ERM from one run and more MaskGen arms from another). ``DIR:old=new`` renames an arm.

    .venv/bin/python experiments/merge_results.py OUT DIR_A DIR_B:maskgen=maskgen_p50 [--arms erm maskgen_p25 ...] \
        [--title "Phantom v2, 4000 steps"] [--paired-against erm]
"""

import argparse
import csv
from pathlib import Path

from maskgen.demo import _write_results, aggregate, format_results
from maskgen.evaluation.plots import plot_domain_bars
from maskgen.io import atomic_write_text
from maskgen.training.curves import plot_validation_curves

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("dirs", nargs="+")
ap.add_argument("--arms", nargs="+", default=None, help="arms to keep, in this order (default: all)")
ap.add_argument("--train-domain", default="T1w")
ap.add_argument("--title", default="Phantom benchmark", help="what the runs are, for the figure titles")
ap.add_argument("--paired-against", default=None,
                help="also print each arm's per-case difference from this arm (mean ± SE over the same cases)")
args = ap.parse_args()

rows = []
logs = {}  # arm -> training log of its first seed, for the validation-curve figure
for spec in args.dirs:
    folder, *renames = spec.split(":")
    names = dict(r.split("=") for r in ",".join(renames).split(",") if r)
    with open(Path(folder) / "results.csv", newline="") as f:
        for r in csv.DictReader(f):
            run = f"{r['method']}_seed{r['seed']}"  # a demo folder has runs/RUN; committed copies hold RUN
            log = next((p for p in (Path(folder) / "runs" / run / "log.csv", Path(folder) / run / "log.csv")
                        if p.exists()), Path(folder) / run / "log.csv")
            r["method"] = names.get(r["method"], r["method"])
            if log.exists():
                logs.setdefault(r["method"], log)
            r["mean_dice"] = float(r["mean_dice"])
            rows.append(r)
arms = args.arms or list(dict.fromkeys(r["method"] for r in rows))
missing = [a for a in arms if not any(r["method"] == a for r in rows)]
if missing:
    raise SystemExit(f"no rows for arm(s) {missing} in {args.dirs}")
rows = sorted((r for r in rows if r["method"] in arms), key=lambda r: arms.index(r["method"]))
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
results = aggregate(rows, [args.train_domain])
_write_results(out, rows, results)
table = format_results(results, [args.train_domain])
atomic_write_text(out / "results.txt", table + "\n")
domains = [d for d in ("T1w", "in-domain (all)", "T2w", "PDw", "FLAIR", "CT", "unseen (all)") if d in results[arms[0]]]
bars = {m: {d: (r[d]["mean"], r[d]["se"]) for d in domains if d in r} for m, r in results.items()}
plot_domain_bars(bars, out / "dice_by_domain.png", title=f"{args.title}: test Dice by domain",
                 in_domain=[args.train_domain, "in-domain (all)"])
if logs:
    plot_validation_curves({a: logs[a] for a in arms if a in logs}, out / "validation_curves.png",
                           title=f"{args.title}: validation Dice (in-domain), first seed")
print(table)

if args.paired_against:
    import math

    import numpy as np

    ref = {(r["seed"], r["case"]): r["mean_dice"] for r in rows if r["method"] == args.paired_against}
    lines = [f"\nPaired difference from {args.paired_against} (same seed and test case; mean ± SE)", ""]
    lines.append("domain".ljust(18) + "".join(a.rjust(18) for a in arms if a != args.paired_against))
    groups = {d: (lambda r, d=d: r["domain"] == d) for d in domains if "(all)" not in d}
    groups["unseen (all)"] = lambda r: r["domain"] != args.train_domain
    for d, member in groups.items():
        cells = []
        for a in arms:
            if a == args.paired_against:
                continue
            diff = np.array([r["mean_dice"] - ref[(r["seed"], r["case"])] for r in rows
                             if r["method"] == a and member(r) and (r["seed"], r["case"]) in ref])
            se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
            cells.append(f"{diff.mean():+.3f} ± {se:.3f}".rjust(18))
        lines.append(d.ljust(18) + "".join(cells))
    paired = "\n".join(lines)
    atomic_write_text(out / "paired.txt", paired + "\n")
    print(paired)
