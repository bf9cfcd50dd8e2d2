"""``per_domain.md/.csv``: the selected cells' test Dice in every domain, mean ± SE over test subjects.

Why: the main table pools the unseen domains into one out-of-domain number, and a method that wins on CT
while losing on T2w looks the same there as one that ties everywhere; the paper reports every domain.
Built from the same per-case rows as ``per_case.csv``, so the two always agree.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from maskgen.evaluation.evaluate import format_stat, mean_se


def per_domain_stats(per_case: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{dataset: {arm: {domain: mean_se}}}: each subject's cases in a domain (over seeds) averaged first."""
    by_subject: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    domains: dict[str, list[str]] = defaultdict(list)
    for r in per_case:
        by_subject[(r["dataset"], r["arm"], r["domain"])][r["subject"]].append(float(r["mean_dice"]))
        if r["domain"] not in domains[r["dataset"]]:
            domains[r["dataset"]].append(r["domain"])
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for (ds, arm, domain), subjects in by_subject.items():
        values = [float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan") for v in subjects.values()]
        out.setdefault(ds, {}).setdefault(arm, {})[domain] = mean_se(values)
    for ds, arms in out.items():  # domains in a stable order: in-domain first, then as they appear
        in_domains = sorted({r["domain"] for r in per_case if r["dataset"] == ds and r["in_domain"]})
        order = in_domains + sorted(d for d in domains[ds] if d not in in_domains)
        out[ds] = {arm: {d: stats[d] for d in order if d in stats} for arm, stats in arms.items()}
    return out


def per_domain_rows(stats: dict[str, dict[str, dict[str, dict[str, Any]]]]) -> list[dict[str, Any]]:
    return [{"dataset": ds, "arm": arm, "domain": d, "mean": s["mean"], "se": s["se"], "n_subjects": s["n"]}
            for ds, arms in stats.items() for arm, doms in arms.items() for d, s in doms.items()]


def format_per_domain(stats: dict[str, dict[str, dict[str, dict[str, Any]]]], arms: list[str],
                      in_domains: dict[str, list[str]]) -> str:
    lines = ["Test Dice of the selected cells in every domain, ± standard error over test subjects "
             "(each subject's cases averaged over the reported seeds); in-domain columns marked *."]
    for ds, by_arm in stats.items():
        domains: list[str] = []
        for doms in by_arm.values():
            domains += [d for d in doms if d not in domains]
        head = ["method"] + [d + (" *" if d in in_domains.get(ds, []) else "") for d in domains]
        lines += ["", f"{ds}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in arms:
            if arm in by_arm:
                lines.append("| " + " | ".join([arm] + [format_stat(by_arm[arm].get(d, {})) for d in domains]) + " |")
    return "\n".join(lines) + "\n"
