"""``torchrun --nproc_per_node 2 maskgen train``: DistributedDataParallel on CPU (gloo), as CI can run it.

Rank 0 alone writes the run folder; the finished run is the single-process format (``predict`` takes it);
``--resume`` works under torchrun; every rank ends with the same weights (gradients were averaged).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

from maskgen.cli import main
from maskgen.runtime.checkpoint import load_checkpoint

TINY = ["--val-every", "3", "--batch-size", "2", "--patch-size", "16", "16", "16", "--base-width", "2",
        "--n-poolings", "2", "--num-workers", "0", "--device", "cpu"]


def _torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _steps(run):
    with (run / "log.csv").open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_two_processes_train_resume_and_predict(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    train = ["-m", "maskgen.cli", "train", str(tiny_dataset), "--out", str(run), "--method", "maskgen", *TINY]
    res = _torchrun(*train, "--steps", "6")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("best validation Dice") == 1  # rank 0 alone reports
    assert _steps(run) == [1, 2, 3, 4, 5, 6]  # rank 0 alone logs: each step once
    assert load_checkpoint(run / "checkpoint_latest.pt")["step"] == 6
    assert (run / "test" / "summary.json").is_file()
    res = _torchrun(*train, "--resume", "--steps", "9", "--no-test")
    assert res.returncode == 0, res.stderr[-3000:]
    assert _steps(run) == list(range(1, 10)), res.stdout[-2000:] + res.stderr[-4000:]
    assert main(["predict", "--run", str(run), "--input", str(tiny_dataset / "imagesTs"),
                 "--output", str(tmp_path / "masks")]) == 0


def test_every_rank_ends_with_the_same_weights(tiny_dataset, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import json, torch, torch.distributed as dist
        from maskgen.runtime.config import TrainConfig
        from maskgen.training.trainer import Trainer
        dist.init_process_group("gloo")
        cfg = TrainConfig(dataset={str(tiny_dataset)!r}, out={str(tmp_path / "run")!r}, method="erm", steps=4,
                          batch_size=2, patch_size=[16, 16, 16], val_every=4, base_width=2, n_poolings=2,
                          convs_per_level=1, num_workers=0, device="cpu")
        t = Trainer(cfg, progress=False)
        t.run()
        flat = torch.cat([p.detach().flatten() for p in t.method.parameters()]).double()
        sums = [torch.zeros(2, dtype=torch.float64) for _ in range(dist.get_world_size())]
        dist.all_gather(sums, torch.stack([flat.sum(), (flat * flat).sum()]))
        start = torch.load({str(tmp_path / "run" / "checkpoint_latest.pt")!r}, weights_only=True)["step"]
        if dist.get_rank() == 0:
            open({str(tmp_path / "sums.json")!r}, "w").write(json.dumps([s.tolist() for s in sums] + [start]))
        dist.destroy_process_group()
    """))
    res = _torchrun(str(script))
    assert res.returncode == 0, res.stderr[-3000:]
    *sums, step = json.loads((tmp_path / "sums.json").read_text())
    assert step == 4 and len(sums) == 2
    assert sums[0] == sums[1]  # identical weights on both ranks after 4 averaged updates
