"""Fault injection: kill -9 a small training run at random moments, resume each time, check nothing is lost.

The finished run must log every step exactly once and leave loadable checkpoints, wherever the kills
landed (imports, dataset check, a step, a validation, the middle of a checkpoint write).
"""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys

from maskgen.io import is_atomic_temporary
from maskgen.runtime.checkpoint import load_checkpoint

STEPS = 300


def _train_cmd(dataset, run):
    return [sys.executable, "-m", "maskgen.cli", "train", str(dataset), "--out", str(run), "--no-test",
            "--method", "erm", "--steps", str(STEPS), "--val-every", "11", "--batch-size", "2",
            "--patch-size", "16", "16", "16", "--base-width", "2", "--n-poolings", "2", "--num-workers", "0",
            "--device", "cpu"]


def test_kill_9_at_random_moments_then_resume_loses_and_repeats_nothing(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(20261202)
    kills, outcome = 0, None
    for attempt in range(20):
        cmd = _train_cmd(tiny_dataset, run) + (["--resume"] if attempt else [])
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if kills < 10:
            try:
                proc.wait(timeout=rng.uniform(1.0, 7.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        else:
            proc.wait(timeout=600)
        outcome = (proc.returncode, proc.stderr.read())
        if proc.returncode == 0:
            break
    assert outcome is not None and outcome[0] == 0, outcome
    assert kills >= 5  # most attempts were really interrupted
    with (run / "log.csv").open(newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, STEPS + 1))
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt"):
        ckpt = load_checkpoint(run / name)
        assert 0 < ckpt["step"] <= STEPS
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == STEPS
    assert not [p.name for p in run.iterdir() if is_atomic_temporary(p.name)]  # no temporary file left behind
