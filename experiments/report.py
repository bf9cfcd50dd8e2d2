"""Markdown tables (mean Dice ± SE over test cases, per domain and per class) from a demo folder.

    .venv/bin/python experiments/report.py DEMO_OUT > table.md
"""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
runs = sorted((out / "runs").glob("*/test/summary.json"))
summaries = {p.parents[1].name: json.loads(p.read_text()) for p in runs}
domains = ["T1w", "T2w", "PDw", "FLAIR", "CT"]


def cell(stat):
    if not stat or stat.get("mean") is None:
        return "-"
    se = stat.get("se")
    return f"{stat['mean']:.3f} ± {se:.3f}" if se is not None else f"{stat['mean']:.3f}"


first = next(iter(summaries.values()))
classes = list(first["label_names"]) if isinstance(first["label_names"], dict) else list(first["label_names"])
print("| run | class | " + " | ".join(d + (" (train)" if d == "T1w" else "") for d in domains) + " |")
print("|---|---|" + "---|" * len(domains))
for run, s in summaries.items():
    print(f"| {run} | **mean** | " + " | ".join(cell(s["domains"].get(d, {}).get("mean_dice")) for d in domains) + " |")
    for c in classes:
        vals = [cell(s["domains"].get(d, {}).get("per_class", {}).get(c, {}).get("dice")) for d in domains]
        print(f"| {run} | {c} | " + " | ".join(vals) + " |")
