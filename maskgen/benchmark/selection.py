"""The paper's protocol after training: validation picks, test reports, ranks compare.

- A cell's validation score is the best validation Dice of its training (the checkpoint that is tested).
- ``seed_rule: mean`` selects the grid point with the best validation Dice averaged over its seeds, and
  the report pools those seeds (while cells are unfinished: over the seeds every grid point with a finished
  cell has finished, marked incomplete); ``seed_rule: best`` selects the (grid point, seed) with the best
  validation Dice (the paper's rule for GIN and GIN+IPA). Ties go to the first in config order.
- Test Dice is averaged over the selected seeds per case, then over each subject's in-domain and
  out-of-domain cases: means and standard errors are over test subjects.
- Ranks: per dataset by mean out-of-domain test Dice (in-domain where a dataset has no unseen domain),
  1 = best, ties share the mean of their ranks; the average rank is over datasets.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.evaluation.evaluate import mean_se


@dataclass
class CellResult:
    dataset: str
    arm: str
    point: dict[str, Any]
    seed: int
    val_dice: float  # nan when the cell has not finished
    rows: list[dict[str, Any]] = field(default_factory=list)  # test rows: case, domain, mean_dice[, mean_hd95]
    done: bool = False


@dataclass
class Selection:
    dataset: str
    arm: str
    point: dict[str, Any]
    seeds: list[int]
    val_dice: float
    complete: bool  # every cell of the arm's grid had finished when it was selected
    candidates: list[dict[str, Any]] = field(default_factory=list)


def best_val_dice(log_csv: Path) -> float:
    """Highest validation Dice logged in a run's ``log.csv`` (nan if none)."""
    if not log_csv.is_file():
        return math.nan
    with log_csv.open(newline="") as f:
        vals = [float(r["val_dice"]) for r in csv.DictReader(f) if r.get("val_dice")]
    vals = [v for v in vals if math.isfinite(v)]
    return max(vals) if vals else math.nan


def read_test_rows(metrics_csv: Path) -> list[dict[str, Any]]:
    rows = []
    with metrics_csv.open(newline="") as f:
        for r in csv.DictReader(f):
            hd = [float(v) for k, v in r.items() if k.startswith("hd95_") and v not in ("", None)]
            hd = [v for v in hd if math.isfinite(v)]
            rows.append({"case": r["case"], "domain": r["domain"], "mean_dice": float(r["mean_dice"]),
                         "mean_hd95": float(np.mean(hd)) if hd else math.nan})
    return rows


def select(results: list[CellResult], seed_rule: str) -> Selection | None:
    """The validation-selected grid point (and seed) among one arm's cells on one dataset."""
    if not results:
        return None
    points: dict[str, dict[str, Any]] = {}
    for r in results:
        key = repr(sorted(r.point.items()))
        entry = points.setdefault(key, {"point": r.point, "cells": []})
        entry["cells"].append(r)
    complete = all(r.done for r in results)
    finished = {k: {c.seed: c for c in e["cells"] if c.done and math.isfinite(c.val_dice)} for k, e in points.items()}
    # mean rule: grid points are compared on the seeds every started point has finished (all seeds once done)
    eligible = [k for k, f in finished.items() if f]
    common = sorted(set.intersection(*(set(finished[k]) for k in eligible))) if eligible else []
    candidates, best = [], None
    for key, entry in points.items():
        cells = list(finished[key].values())
        if seed_rule == "best":
            options = [(c.val_dice, [c.seed]) for c in cells]
        else:
            chosen = [finished[key][s] for s in common] if key in eligible else []
            options = [(float(np.mean([c.val_dice for c in chosen])), [c.seed for c in chosen])] if chosen else []
        for score, seeds in options:
            candidates.append({"point": entry["point"], "seeds": seeds, "val_dice": score})
            if best is None or score > best[0]:
                best = (score, entry["point"], seeds)
    if best is None:
        return None
    return Selection(results[0].dataset, results[0].arm, best[1], best[2], best[0], complete, candidates)


def average_ranks(scores: dict[str, float]) -> dict[str, float]:
    """Rank 1 = highest score; tied scores share the mean of the ranks they span; nan ranks last."""
    order = sorted(scores, key=lambda k: (not math.isfinite(scores[k]), -scores[k] if math.isfinite(scores[k]) else 0))
    ranks: dict[str, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and _same(scores[order[j + 1]], scores[order[i]]):
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + 1 + j + 1) / 2
        i = j + 1
    return ranks


def _same(a: float, b: float) -> bool:
    return (not math.isfinite(a) and not math.isfinite(b)) or a == b


def subject_scores(rows_by_seed: dict[int, list[dict[str, Any]]], subjects: dict[str, str],
                   in_domains: set[str], key: str = "mean_dice") -> dict[str, dict[str, float]]:
    """group ('in-domain' | 'out-of-domain' | a domain) -> subject -> value, seeds averaged per case first."""
    per_case: dict[str, list[float]] = {}
    domain_of: dict[str, str] = {}
    for rows in rows_by_seed.values():
        for r in rows:
            per_case.setdefault(r["case"], []).append(r[key])
            domain_of[r["case"]] = r["domain"]
    groups: dict[str, dict[str, list[float]]] = {}
    for case, vals in per_case.items():
        finite = [v for v in vals if math.isfinite(v)]
        value = float(np.mean(finite)) if finite else math.nan
        domain = domain_of[case]
        subject = subjects.get(case, case)
        for g in (domain, "in-domain" if domain in in_domains else "out-of-domain"):
            groups.setdefault(g, {}).setdefault(subject, []).append(value)
    return {g: {s: float(np.nanmean(v)) if any(math.isfinite(x) for x in v) else math.nan
                for s, v in subs.items()} for g, subs in groups.items()}


def summarize_groups(scores: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Mean ± SE over subjects per group."""
    return {g: mean_se(subs.values()) for g, subs in scores.items()}


def paired_difference(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """Mean ± SE over the subjects both have of ``a - b``."""
    common = sorted(set(a) & set(b))
    return mean_se(a[s] - b[s] for s in common)


def seed_spread(rows_by_seed: dict[int, list[dict[str, Any]]], subjects: dict[str, str],
                in_domains: set[str], group: str) -> dict[str, Any]:
    """Mean ± SE over seeds of the group's subject-mean Dice (each seed scored alone)."""
    per_seed = []
    for seed, rows in rows_by_seed.items():
        s = subject_scores({seed: rows}, subjects, in_domains).get(group, {})
        vals = [v for v in s.values() if math.isfinite(v)]
        if vals:
            per_seed.append(float(np.mean(vals)))
    return mean_se(per_seed)
