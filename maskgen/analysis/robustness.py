"""``maskgen analyze robustness``: test Dice under intensity gamma and bias fields of increasing strength.

The perturbation acts on the preprocessed image (intensities in [0, 1]) just before segmentation:
gamma ``x -> x ** g``; a bias field is MONAI's ``RandBiasField`` (degree 3) with every coefficient drawn
from ``[-s, s]`` for strength ``s``, multiplied in and the image rescaled to [0, 1], three seeded fields
per strength. Gamma 1 and strength 0 leave the image untouched, so they reproduce the clean test Dice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import RandBiasField

from maskgen.analysis.registry import Analysis, Option, first_paragraph, read_text_report, register_analysis
from maskgen.analysis.runs import resolve_runs, write_rows_and_summary
from maskgen.data.volumes import plain_tensor
from maskgen.evaluation.evaluate import case_mean_se
from maskgen.evaluation.testing import labelled_test_cases, score_cases
from maskgen.figures import new_figure, save_figure
from maskgen.inference.predict import Predictor
from maskgen.io import atomic_write_text, ensure_fresh_dir

DEFAULT_GAMMAS = (0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_BIAS = (0.0, 0.2, 0.4, 0.6)


def gamma(g: float):
    return None if g == 1.0 else (lambda x: x.clamp_min(0) ** g)


def bias_field(strength: float, seed: int):
    if strength == 0.0:
        return None

    def apply(x: torch.Tensor) -> torch.Tensor:
        t = RandBiasField(degree=3, coeff_range=(-strength, strength), prob=1.0)
        t.set_random_state(seed=seed)
        y = t(x)
        y = plain_tensor(y).float()
        lo, hi = y.min(), y.max()
        return (y - lo) / (hi - lo) if hi > lo else y

    return apply


def robustness(runs: Sequence[str | Path], out: str | Path, gammas: Sequence[float] = DEFAULT_GAMMAS,
               strengths: Sequence[float] = DEFAULT_BIAS, fields: int = 3, checkpoint: str = "best",
               device: str = "auto", overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Mean test Dice per run, perturbation and level (± SE over cases); writes robustness.csv, summary.json,
    robustness.txt and robustness.png into ``out``."""
    resolved = resolve_runs(runs, checkpoint)  # bad runs fail before anything is written
    out = ensure_fresh_dir(out, overwrite, what="analysis folder")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for name, run in resolved:
        pred = Predictor(run, checkpoint=checkpoint, device=device)
        cfg = pred.cfg
        cases = labelled_test_cases(cfg, run)
        plan = [("gamma", g, 0, gamma(g)) for g in gammas]
        plan += [("bias", s, k, bias_field(s, seed=k)) for s in strengths for k in range(1 if s == 0 else fields)]
        summary[name] = {"run": str(run), "method": cfg.method, "gamma": {}, "bias": {}}
        per_level: dict[tuple[str, float], dict[str, list[float]]] = {}
        for kind, level, draw, fn in plan:
            pred.perturb = fn
            res = score_cases(pred, cases, out / "scratch", cfg.label_names or {}, compute_hd95=False,
                              save_predictions=False, overwrite=True, progress=progress)
            for r in res["rows"]:
                rows.append({"run": name, "method": cfg.method, "perturbation": kind, "level": level, "draw": draw,
                             "case": r["case"], "domain": r["domain"], "mean_dice": r["mean_dice"]})
                per_level.setdefault((kind, level), {}).setdefault(r["case"], []).append(r["mean_dice"])
        pred.perturb = None
        for (kind, level), by_case in per_level.items():
            summary[name][kind][str(level)] = case_mean_se(by_case)
    _write(out, rows, summary)
    return summary


def _write(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    write_rows_and_summary(out, "robustness.csv", rows, summary)
    lines = ["Mean test Dice (± SE over cases; bias: mean over fields per case first)", ""]
    fig = new_figure((10, 3.6))
    axes = fig.subplots(1, 2)
    for ax, kind, xlabel in ((axes[0], "gamma", "gamma g (x -> x^g)"), (axes[1], "bias", "bias field strength")):
        for name, s in summary.items():
            levels = sorted(s[kind], key=float)
            means = [s[kind][k]["mean"] for k in levels]
            ses = [s[kind][k]["se"] or 0.0 for k in levels]
            ax.errorbar([float(k) for k in levels], [m if m is not None else np.nan for m in means], yerr=ses,
                        marker="o", capsize=3, label=f"{name} ({s['method']})")
            lines.append(f"{name:24s} {kind:6s} " + "  ".join(
                f"{k}: {s[kind][k]['mean']:.3f}" if s[kind][k]["mean"] is not None else f"{k}: -" for k in levels))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    save_figure(fig, out / "robustness.png")
    atomic_write_text(out / "robustness.txt", "\n".join(lines) + "\n")


register_analysis(Analysis(
    name="robustness", function=robustness, help="test Dice under gamma and bias fields of increasing strength",
    description=first_paragraph(__doc__), out_help="analysis folder (robustness.csv, summary.json, .txt, .png)",
    report=read_text_report("robustness.txt"), options=(
        Option("--gammas", f"gamma levels (default {' '.join(map(str, DEFAULT_GAMMAS))})", DEFAULT_GAMMAS, float, "+"),
        Option("--strengths", f"bias field strengths (default {' '.join(map(str, DEFAULT_BIAS))})", DEFAULT_BIAS,
               float, "+"),
        Option("--fields", "seeded bias fields per strength (default 3)", 3, int),
    ),
))
