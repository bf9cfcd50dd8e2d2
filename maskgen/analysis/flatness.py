"""``maskgen analyze flatness``: test Dice after Gaussian noise of increasing scale on all trained weights.

For noise scale ``s`` every parameter tensor ``W`` of the trained model (the network, and the extractor only
where the method fine-tuned it; BatchNorm running statistics are left alone) becomes
``W + s * rms(W) * N(0, 1)``, with ``rms(W) = ||W||_F / sqrt(numel(W))``: the noise's norm is ``s`` times
the tensor's own norm, so layers of any size are shaken alike. Five seeded draws per scale (the paper's
B.7); scale 0 reproduces the clean test Dice. A flatter solution loses less as ``s`` grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgen.analysis.registry import Analysis, Option, first_paragraph, read_text_report, register_analysis
from maskgen.analysis.runs import resolve_runs, write_rows_and_summary
from maskgen.evaluation.evaluate import case_mean_se
from maskgen.evaluation.testing import labelled_test_cases, score_cases
from maskgen.figures import new_figure, save_figure
from maskgen.inference.predict import Predictor
from maskgen.io import atomic_write_text, ensure_fresh_dir

DEFAULT_SCALES = (0.0, 0.05, 0.1, 0.2, 0.3)


@torch.no_grad()
def add_weight_noise(module: torch.nn.Module, scale: float, seed: int) -> None:
    """In place: ``W += scale * rms(W) * N(0, 1)`` for every parameter, drawn from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        rms = p.detach().float().pow(2).mean().sqrt()
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        p.add_((scale * rms * noise).to(device=p.device, dtype=p.dtype))


def flatness(runs: Sequence[str | Path], out: str | Path, scales: Sequence[float] = DEFAULT_SCALES, draws: int = 5,
             checkpoint: str = "best", device: str = "auto", overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Mean test Dice per run and noise scale (± SE over cases, each case averaged over the draws first);
    writes flatness.csv, summary.json, flatness.txt and flatness.png into ``out``."""
    if draws < 1:
        raise ValueError(f"--draws must be at least 1, got {draws}")
    if any(s < 0 for s in scales):
        raise ValueError(f"noise scales must be >= 0, got {list(scales)}")
    resolved = resolve_runs(runs, checkpoint)  # bad runs fail before anything is written
    out = ensure_fresh_dir(out, overwrite, what="analysis folder")
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for name, run in resolved:
        pred = Predictor(run, checkpoint=checkpoint, device=device)
        cfg = pred.cfg
        cases = labelled_test_cases(cfg, run)
        clean = {k: v.detach().clone() for k, v in pred.method.state_dict().items()}
        summary[name] = {"run": str(run), "method": cfg.method, "scales": {}}
        for i, scale in enumerate(scales):
            by_case: dict[str, list[float]] = {}
            for draw in range(1 if scale == 0 else draws):
                if scale > 0:
                    add_weight_noise(pred.method, scale, seed=1000 * i + draw)
                res = score_cases(pred, cases, out / "scratch", cfg.label_names or {}, compute_hd95=False,
                                  save_predictions=False, overwrite=True, progress=progress)
                pred.method.load_state_dict(clean)
                for r in res["rows"]:
                    rows.append({"run": name, "method": cfg.method, "scale": scale, "draw": draw, "case": r["case"],
                                 "domain": r["domain"], "mean_dice": r["mean_dice"]})
                    by_case.setdefault(r["case"], []).append(r["mean_dice"])
            summary[name]["scales"][str(scale)] = case_mean_se(by_case)
    _write(out, rows, summary)
    return summary


def _write(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    write_rows_and_summary(out, "flatness.csv", rows, summary)
    lines = ["Mean test Dice after weight noise of relative scale s (± SE over cases; draws averaged per case)", ""]
    fig = new_figure((5.5, 3.8))
    ax = fig.add_subplot()
    for name, s in summary.items():
        levels = sorted(s["scales"], key=float)
        means = [s["scales"][k]["mean"] for k in levels]
        ses = [s["scales"][k]["se"] or 0.0 for k in levels]
        ax.errorbar([float(k) for k in levels], [m if m is not None else np.nan for m in means], yerr=ses,
                    marker="o", capsize=3, label=f"{name} ({s['method']})")
        lines.append(f"{name:24s} " + "  ".join(
            f"s={k}: {s['scales'][k]['mean']:.3f}" if s["scales"][k]["mean"] is not None else f"s={k}: -"
            for k in levels))
    ax.set_xlabel("weight noise scale s (noise norm / weight norm, per tensor)")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    save_figure(fig, out / "flatness.png")
    atomic_write_text(out / "flatness.txt", "\n".join(lines) + "\n")


register_analysis(Analysis(
    name="flatness", function=flatness, help="test Dice after Gaussian noise of increasing scale on all weights (B.7)",
    description=first_paragraph(__doc__), out_help="analysis folder (flatness.csv, summary.json, .txt, .png)",
    report=read_text_report("flatness.txt"), options=(
        Option("--scales", "noise scales relative to each weight tensor's norm (default "
               f"{' '.join(map(str, DEFAULT_SCALES))})", DEFAULT_SCALES, float, "+"),
        Option("--draws", "seeded noise draws per scale (default 5, the paper's)", 5, int),
    ),
))
