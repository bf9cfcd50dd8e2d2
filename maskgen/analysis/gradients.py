"""``maskgen analyze gradients``: the paper's gradient check (B.2) of runs trained with ``--grad-check-every``.

Reads each run's ``grad_check.csv`` (see ``maskgen.training.grad_check``) and summarises the cosines between
the feature-channel kernel gradients under the joint and the features-only input: per run, the share of
checks above zero and the median, overall and per feature channel, plus a histogram like the paper's
Figure 8 (it should lie above zero).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.analysis.registry import Analysis, read_text_report, register_analysis
from maskgen.analysis.runs import resolve_runs
from maskgen.figures import new_figure, save_figure
from maskgen.io import atomic_write_csv, atomic_write_json, atomic_write_text, ensure_fresh_dir
from maskgen.runtime.config import TrainConfig
from maskgen.training.grad_check import FILE


def read_grad_check(run: Path) -> list[dict[str, Any]]:
    path = run / FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no gradient check in this run; train it with --grad-check-every K")
    with path.open(newline="") as f:
        rows = [{"step": int(r["step"]), "channel": k, "cosine": float(v)}
                for r in csv.DictReader(f) for k, v in r.items() if k != "step" and v not in ("", None)]
    if not rows:
        raise ValueError(f"{path}: holds no checks yet")
    return rows


def _stats(values: list[float]) -> dict[str, Any]:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if not v.size:
        return {"n": 0, "share_above_zero": None, "median": None, "mean": None}
    return {"n": int(v.size), "share_above_zero": float((v > 0).mean()), "median": float(np.median(v)),
            "mean": float(v.mean())}


def gradients(runs: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Summary per run (``all``: whole feature slice; ``per_channel``: every feature channel's slice, pooled)."""
    resolved = resolve_runs(runs)
    data = {name: read_grad_check(run) for name, run in resolved}  # every run is checked before anything is written
    out = ensure_fresh_dir(out, overwrite, what="analysis folder")
    summary: dict[str, Any] = {}
    for name, run in resolved:
        rows = data[name]
        method = TrainConfig.load(run / "config.yaml").method if (run / "config.yaml").is_file() else "?"
        summary[name] = {
            "run": str(run), "method": method, "checks": len({r["step"] for r in rows}),
            "all": _stats([r["cosine"] for r in rows if r["channel"] == "all"]),
            "per_channel": _stats([r["cosine"] for r in rows if r["channel"] != "all"]),
        }
    atomic_write_csv(out / "gradients.csv", [{"run": name, **r} for name, rows in data.items() for r in rows],
                     ["run", "step", "channel", "cosine"])
    atomic_write_json(out / "summary.json", summary)
    lines = ["Cosine between first-conv feature-kernel gradients, joint vs features-only input (B.2)", ""]
    for name, s in summary.items():
        for key in ("all", "per_channel"):
            st = s[key]
            if st["n"]:
                lines.append(f"{name:24s} {key:12s} n={st['n']:5d}  above zero {100 * st['share_above_zero']:5.1f} %  "
                             f"median {st['median']:+.3f}")
    atomic_write_text(out / "gradients.txt", "\n".join(lines) + "\n")
    fig = new_figure((6.0, 3.8))
    ax = fig.add_subplot()
    bins = np.linspace(-1, 1, 41)
    for name, rows in data.items():
        vals = [r["cosine"] for r in rows if r["channel"] != "all" and math.isfinite(r["cosine"])]
        if vals:
            ax.hist(vals, bins=bins, alpha=0.5, label=f"{name} ({summary[name]['method']})")
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("cosine(grad joint, grad features only), per feature channel and check")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    save_figure(fig, out / "gradients.png")
    return summary


register_analysis(Analysis(
    name="gradients", function=gradients, help="the gradient check (B.2) of runs trained with --grad-check-every",
    description="Histogram and summary of the cosines in each run's grad_check.csv (the paper's appendix B.2, "
                "Figure 8).",
    runs="run folders trained with maskgen train --grad-check-every K",
    out_help="analysis folder (gradients.csv, summary.json, .txt, .png)", report=read_text_report("gradients.txt"),
    model_options=False,
))
