"""Training curves from a run's ``log.csv``: loss and validation Dice of one run, or validation of several."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from maskgen.figures import new_figure as _new_figure
from maskgen.figures import save_figure as _save


def _num(s: str | None) -> float:
    try:
        return float(s) if s not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _read_log(log_csv: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, losses and (validation steps, Dice); a step logged twice (resume) keeps its last row."""
    with log_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"step", "loss", "val_dice"}
        if not need <= set(reader.fieldnames or []):
            raise ValueError(f"{log_csv}: needs columns step, loss, lr, val_dice; found {reader.fieldnames}")
        by_step: dict[int, tuple[float, float]] = {}
        for row in reader:
            if not (row.get("step") or "").strip():
                continue
            by_step[int(float(row["step"]))] = (_num(row["loss"]), _num(row["val_dice"]))
    steps = np.array(sorted(by_step), dtype=float)
    loss = np.array([by_step[int(s)][0] for s in steps], dtype=float)
    val = np.array([by_step[int(s)][1] for s in steps], dtype=float)
    ok = np.isfinite(val)
    return steps, loss, steps[ok], val[ok]


def plot_training_curves(log_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """Loss (raw and moving average) and validation Dice against step, from a trainer ``log.csv``."""
    log_csv = Path(log_csv)
    steps, loss, val_steps, val = _read_log(log_csv)
    fig = _new_figure((10.0, 3.8))
    ax_loss, ax_val = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ok = np.isfinite(loss)
    s_ok, l_ok = steps[ok], loss[ok]
    if l_ok.size:
        ax_loss.plot(s_ok, l_ok, color="tab:blue", alpha=0.25, lw=0.8, label="loss")
        window = int(min(50, max(1, l_ok.size // 10)))
        if window > 1:
            ma = np.convolve(l_ok, np.ones(window) / window, mode="valid")
            ax_loss.plot(s_ok[window - 1:], ma, color="tab:blue", lw=1.6, label=f"moving average ({window})")
        ax_loss.legend(fontsize="small")
    else:
        ax_loss.text(0.5, 0.5, "no loss values", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.grid(alpha=0.3)
    if val.size:
        ax_val.plot(val_steps, val, "o-", color="tab:green", ms=3)
        best = int(np.argmax(val))
        ax_val.plot(val_steps[best], val[best], "*", color="tab:red", ms=10,
                    label=f"best {val[best]:.3f} @ {int(val_steps[best])}")
        ax_val.legend(fontsize="small", loc="lower right")
    else:
        ax_val.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("validation Dice")
    ax_val.set_ylim(0, 1)
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_validation_curves(logs: dict[str, str | Path], path: str | Path, title: str = "") -> Path:
    """Validation Dice against step for several runs on one axis, each best point starred: shows which arm has
    converged (a flat tail) before their test scores are compared."""
    if not logs:
        raise ValueError("plot_validation_curves: no runs given")
    fig = _new_figure((7.0, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for name, log_csv in logs.items():
        log_csv = Path(log_csv)
        if not log_csv.exists():
            raise FileNotFoundError(f"{log_csv}: no training log for run {name!r}")
        _, _, val_steps, val = _read_log(log_csv)
        if not val.size:
            continue
        (line,) = ax.plot(val_steps, val, "o-", ms=3, lw=1.2, label=f"{name} (best {val.max():.3f})")
        best = int(np.argmax(val))
        ax.plot(val_steps[best], val[best], "*", color=line.get_color(), ms=11)
    ax.set_xlabel("step")
    ax.set_ylabel("validation Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    return _save(fig, path)
