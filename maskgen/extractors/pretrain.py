"""``maskgen pretrain-extractor``: our own stable extractor, pretrained the anatomix way on procedural data.

The recipe of ``shared/spec/anatomix.md`` section 4, sized for a CPU:

- **Data**: pairs of views of random label ensembles from :mod:`maskgen.extractors.synth` (no external
  data), one shared geometric augmentation per pair, independent appearance per view.
- **Network**: :class:`~maskgen.extractors.anatomix.AnatomixUNet` (the anatomix architecture: reflect-padded
  3x3x3 double convs, BatchNorm, max pooling, nearest upsampling, a 3x3x3 linear head) with its width
  (``--base-width``, anatomix 16), depth (``--depth`` = poolings, anatomix 4) and output channels (16) set by
  flags.
- **Loss**: supervised contrastive (SupCon, "all" mode, temperature 0.33) on ``--num-points`` voxel
  locations per layer, shared by both views, labelled by the nearest-resized label map, at the layers the
  recipe uses (for depth n: the second conv of the deepest encoder level, the first bottleneck conv, the
  first conv of every decoder level but the last, and the output; all raw conv outputs; equal weights).
  Each layer has a projection head (3 bias-free linear layers with BatchNorm + ReLU between them and a
  final non-affine BatchNorm, i.e. a 1x1x1-conv MLP applied to the sampled voxels), discarded after
  training. The loss of a batch is the mean over its pairs (each pair is its own label space).
- **Optimisation**: AdamW (betas 0.9/0.999, weight decay 1e-5), the recipe's ``const_linear`` schedule
  mapped onto the run (5 equal "epochs", lr factor 1, 0.8, ..., 0.2).

Every training pair and every set of sampled locations is a pure function of (seed, step), so a run
resumed from its checkpoint continues exactly as if it had not stopped.

Run folder: ``config.json`` (exact command, seed, steps, wall time, ...), ``log.csv``, ``loss_curve.png``,
``checkpoint_latest.pt`` (full training state, for ``--resume``) and ``extractor.pt``: the network weights
and constructor arguments only (``torch.load(weights_only=True)``), usable with
``--extractor maskgen-synth --extractor-weights OUT_DIR/extractor.pt``, or shipped as
``maskgen/extractors/weights/maskgen-synth.pt``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskgen.extractors.anatomix import AnatomixUNet
from maskgen.extractors.pretrained import save_extractor_checkpoint
from maskgen.extractors.synth import SynthConfig, make_pair
from maskgen.io import (
    OutputExistsError,
    atomic_torch_save,
    atomic_write,
    atomic_write_json,
    load_tagged_checkpoint,
)
from maskgen.steplog import StepLog, truncate_step_log

PRETRAIN_FORMAT = "maskgen-pretrain-v1"
LOG_FIELDS = ["step", "loss", "val_loss", "lr", "seconds"]
#: files a run writes; --overwrite removes exactly these
RUN_FILES = ("config.json", "log.csv", "loss_curve.png", "checkpoint_latest.pt", "extractor.pt")
log = logging.getLogger("maskgen")

# seed streams: every random draw of a run is keyed by (seed, stream, ...)
_TRAIN_DATA, _VAL_DATA, _TRAIN_POINTS, _VAL_POINTS = 0, 1, 2, 3


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run (the CPU-sized defaults; anatomix values in comments)."""

    steps: int = 1200  # anatomix: 600k (1200 x ~1 s on 2 CPU cores: ~20 min)
    crop: int = 32  # anatomix: 128
    batch_size: int = 2  # pairs per step; anatomix: 1
    base_width: int = 8  # anatomix ngf: 16
    depth: int = 3  # poolings; anatomix: 4
    out_channels: int = 16  # anatomix: 16
    norm: str = "batch"  # anatomix: batch
    lr: float = 1e-3  # anatomix: 2e-4 (for 600k steps)
    weight_decay: float = 1e-5
    temperature: float = 0.33
    num_points: int = 512  # sampled locations per layer and pair
    proj_dim: int = 128  # projection head width; anatomix: 256
    n_labels_min: int = 8
    n_labels_max: int = 16
    val_pairs: int = 4
    val_every: int = 100
    checkpoint_every: int = 100
    seed: int = 1234567
    device: str = "auto"

    def arch(self) -> dict[str, Any]:
        """``AnatomixUNet`` keyword arguments."""
        return dict(
            dimension=3, input_nc=1, output_nc=self.out_channels, num_downs=self.depth, ngf=self.base_width,
            norm=self.norm, pooling="Max" if self.norm == "batch" else "Avg",
            interp="nearest" if self.norm == "batch" else "trilinear", norm_eps=1e-5 if self.norm == "batch" else 1e-2,
        )  # fmt: skip

    def synth(self) -> SynthConfig:
        return SynthConfig(size=self.crop, n_shapes=(self.n_labels_min, self.n_labels_max))

    def validate(self) -> None:
        m = 2**self.depth
        if self.depth < 1:
            raise ValueError(f"--depth must be >= 1, got {self.depth}")
        if self.crop % m or self.crop < 2 * m:
            raise ValueError(
                f"--crop {self.crop}: must be a multiple of {m} and at least {2 * m} for --depth {self.depth}"
            )
        if self.norm not in ("batch", "instance"):
            raise ValueError(f"--norm must be batch or instance, got {self.norm!r}")
        for name in ("steps", "batch_size", "base_width", "out_channels", "num_points", "proj_dim", "val_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.n_labels_min <= self.n_labels_max:
            raise ValueError(f"need 1 <= n_labels_min <= n_labels_max, got {self.n_labels_min}, {self.n_labels_max}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("--lr and --temperature must be > 0")

    def command(self, out_dir: str | Path) -> str:
        """The full command line that reproduces this run from scratch."""
        flags = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        parts = ["maskgen", "pretrain-extractor", str(out_dir)]
        for k, v in flags.items():
            if k in _CLI_ONLY_IN_API:
                continue
            parts += [f"--{k.replace('_', '-')}", str(v)]
        return shlex.join(parts)


#: config fields without a command-line flag (left at their defaults by the CLI)
_CLI_ONLY_IN_API = ("n_labels_min", "n_labels_max", "val_pairs")


# ------------------------------------------------------------------------------------------------- loss
def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.33) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "all" mode) of embeddings ``z`` (N, d) with ``labels`` (N,).

    Cosine similarities / T; every embedding is an anchor, its positives are all *other* embeddings with its
    label, the denominator runs over all other embeddings. Loss = mean over anchors (with at least one
    positive) of minus the mean log-probability of their positives.
    """
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    has = n_pos > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    mean_log_prob_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[has] / n_pos[has]
    return -mean_log_prob_pos.mean()


class ProjectionHead(nn.Module):
    """3 bias-free linear layers, BatchNorm1d + ReLU between them, a final BatchNorm1d without affine."""

    def __init__(self, in_channels: int, dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_channels, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
        )  # fmt: skip
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif isinstance(m, nn.BatchNorm1d) and m.affine:
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def supcon_layers(unet: AnatomixUNet) -> list[int]:
    """The recipe's loss layers, generalised to any depth: [27, 31, 38, 45, 52, 65] for the default anatomix.

    Second conv of the deepest encoder level, first bottleneck conv, first conv of each decoder level but
    the last, and the output conv: all raw conv outputs.
    """
    deepest_skip = unet.skip_indices[-1]  # after the ReLU of the deepest encoder double conv
    return [deepest_skip - 2, deepest_skip + 2, *[u + 1 for u in unet.upsample_indices[:-1]], unet.output_index]


def lr_factor(step: int, total: int, epochs: int = 5) -> float:
    """anatomix ``const_linear`` (0 constant + 4 decay epochs, factor 1 - epoch / 5) over ``total`` steps."""
    epoch = min(epochs - 1, int(epochs * step / max(1, total)))
    return 1.0 - epoch / epochs


def _seed_generator(*key: int) -> torch.Generator:
    state = np.random.SeedSequence(list(key)).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


# -------------------------------------------------------------------------------------------- training
class Pretrainer:
    """One resumable pretraining run in ``out_dir`` (see the module docstring)."""

    def __init__(
        self,
        out_dir: str | Path,
        cfg: PretrainConfig | None = None,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        given: Sequence[str] = (),
        max_minutes: float | None = None,
    ):
        """``given``: config fields set explicitly by the caller; on ``resume`` only steps and device may differ.
        ``max_minutes``: stop this invocation cleanly (checkpoint written, run unfinished, ``--resume``
        continues it) once its wall time passes this, so a long pretraining can go on in slices: in the
        background across sessions on a CPU, or inside a GPU lease."""
        if max_minutes is not None and not max_minutes > 0:
            raise ValueError(f"--max-minutes must be positive, got {max_minutes}")
        self.max_minutes = max_minutes
        self.out = Path(out_dir)
        self.progress = progress
        self.resume = resume
        cfg = cfg or PretrainConfig()
        latest = self.out / "checkpoint_latest.pt"
        if resume:
            if not latest.is_file():
                raise FileNotFoundError(f"{latest}: nothing to resume (no checkpoint in {self.out})")
            saved_json = _read_json(self.out / "config.json")
            saved = PretrainConfig(**saved_json["config"])
            clash = [f"--{k.replace('_', '-')} {getattr(cfg, k)} (run: {getattr(saved, k)})" for k in given
                     if k not in ("steps", "device") and getattr(cfg, k) != getattr(saved, k)]
            if clash:
                raise ValueError(f"--resume continues the run as configured; these flags differ from it: {', '.join(clash)}")
            if "steps" in given:
                saved.steps = cfg.steps
            if "device" in given:
                saved.device = cfg.device
            self.previous = saved_json
            cfg = saved
        else:
            self.previous = None
            if self.out.exists() and any(self.out.iterdir()):
                if not overwrite:
                    raise OutputExistsError(
                        f"{self.out}: folder already exists and is not empty; use --resume to continue the run in "
                        "it, --overwrite to start again, or choose another OUT_DIR"
                    )
                for name in RUN_FILES:
                    (self.out / name).unlink(missing_ok=True)
        cfg.validate()
        self.cfg = cfg

    # ------------------------------------------------------------------ model
    def _build(self) -> None:
        from maskgen.device import resolve_device

        cfg = self.cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.net = AnatomixUNet(**cfg.arch()).to(self.device)
        self.layers = supcon_layers(self.net)
        self.heads = nn.ModuleList(
            ProjectionHead(self.net.layer_info[i][0], cfg.proj_dim) for i in self.layers
        ).to(self.device)
        params = list(self.net.parameters()) + list(self.heads.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, self.cfg.steps))
        self.step = 0
        self.wall_before = 0.0
        self.synth = cfg.synth()
        self.val_data = [make_pair((cfg.seed, _VAL_DATA, i), self.synth) for i in range(cfg.val_pairs)]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2, 1, S, S, S) views and (B, S, S, S) labels of training step ``step`` (0-based)."""
        pairs = [make_pair((self.cfg.seed, _TRAIN_DATA, step, b), self.synth) for b in range(self.cfg.batch_size)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def loss(self, views: torch.Tensor, segs: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, list[float]]:
        """Mean over layers of the mean over pairs of SupCon on the sampled voxels of both views."""
        b = views.shape[0]
        x = torch.cat([views[:, 0], views[:, 1]]).to(self.device)  # (2B, 1, S, S, S): first views, then second
        _, feats = self.net(x, layers=self.layers)
        per_layer = []
        for f, head in zip(feats, self.heads):
            seg = F.interpolate(segs[:, None].float(), size=f.shape[2:], mode="nearest").long().flatten(1)  # (B, n)
            n = seg.shape[1]
            k = min(self.cfg.num_points, n)
            idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(b)])  # (B, k), same in both views
            flat = f.flatten(2)  # (2B, C, n)
            idx_d = idx.to(self.device)
            gather = idx_d[:, None, :].expand(b, f.shape[1], k)
            z = torch.cat([flat[:b].gather(2, gather), flat[b:].gather(2, gather)], dim=2)  # (B, C, 2k)
            z = head(z.transpose(1, 2).reshape(b * 2 * k, -1)).reshape(b, 2 * k, -1)
            lab = seg.gather(1, idx).repeat(1, 2).to(self.device)  # (B, 2k)
            per_layer.append(torch.stack([supcon_loss(z[i], lab[i], self.cfg.temperature) for i in range(b)]).mean())
        total = torch.stack(per_layer).mean()
        return total, [float(v.detach()) for v in per_layer]

    @torch.no_grad()
    def validate(self) -> float:
        self.net.eval()
        self.heads.eval()
        try:
            losses = [
                float(self.loss(v[None], s[None], _seed_generator(self.cfg.seed, _VAL_POINTS, i))[0])
                for i, (v, s) in enumerate(self.val_data)
            ]
        finally:
            self.net.train()
            self.heads.train()
        return float(np.mean(losses)) if losses else float("nan")

    # ------------------------------------------------------------ checkpoints
    def _save(self, wall: float, last_loss: float, last_val: float, finished: bool) -> None:
        state = {
            "format": PRETRAIN_FORMAT,
            "step": self.step,
            "net": self.net.state_dict(),
            "heads": self.heads.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "config": asdict(self.cfg),
            "wall_time_s": wall,
        }
        atomic_torch_save(state, self.out / "checkpoint_latest.pt")
        meta = {"steps": self.step, "seed": self.cfg.seed, "crop": self.cfg.crop, "val_loss": last_val,
                "command": self.cfg.command(self.out)}
        save_extractor_checkpoint(self.out / "extractor.pt", self.net, self.cfg.arch(), meta)
        self._write_config(wall, last_loss, last_val, finished)

    def _restore(self) -> None:
        ckpt = load_tagged_checkpoint(self.out / "checkpoint_latest.pt", PRETRAIN_FORMAT, self.device)
        self.net.load_state_dict(ckpt["net"])
        self.heads.load_state_dict(ckpt["heads"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.wall_before = float(ckpt.get("wall_time_s", 0.0))
        truncate_step_log(self.out / "log.csv", self.step, LOG_FIELDS)
        log.info("resumed pretraining from step %d", self.step)

    def _write_config(self, wall: float, last_loss: float, last_val: float, finished: bool) -> None:
        prev = self.previous or {}
        started = prev.get("started") or self.started
        n_net = sum(p.numel() for p in self.net.parameters())
        n_heads = sum(p.numel() for p in self.heads.parameters())
        done = self.step
        atomic_write_json(self.out / "config.json", {
            "command": self.cfg.command(self.out),
            "argv": self.argv_history,
            "config": asdict(self.cfg),
            "seed": self.cfg.seed,
            "steps": self.cfg.steps,
            "steps_done": done,
            "finished": finished,
            "wall_time_s": round(wall, 2),
            "seconds_per_step": round(wall / done, 4) if done else None,
            "last_loss": last_loss,
            "last_val_loss": last_val,
            "started": started,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "resumes": int(prev.get("resumes", 0)) + 1 if prev else 0,
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
            "maskgen_version": _version(),
            "parameters": {"extractor": n_net, "projection_heads": n_heads},
            "loss_layers": self.layers,
            "architecture": self.cfg.arch(),
            "extractor": "extractor.pt",
        })  # fmt: skip

    # ------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.argv_history = list((self.previous or {}).get("argv", [])) + [shlex.join(sys.argv)]
        self._build()
        if self.resume:
            self._restore()
        cfg = self.cfg
        t_start = time.perf_counter()
        last_loss, last_val = float("nan"), float("nan")
        self._write_config(self.wall_before, last_loss, last_val, finished=self.step >= cfg.steps)
        log_path = self.out / "log.csv"
        step_log = StepLog(log_path, LOG_FIELDS, self.resume)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="pretrain extractor", disable=not self.progress)
        self.net.train()
        self.heads.train()
        ema = None
        saved_at = self.step
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                views, segs = self.batch(self.step)
                loss, _ = self.loss(views, segs, _seed_generator(cfg.seed, _TRAIN_POINTS, self.step))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                last_loss = float(loss.detach())
                if not math.isfinite(last_loss):
                    raise FloatingPointError(f"loss became {last_loss} at step {self.step}; lower --lr")
                ema = last_loss if ema is None else 0.95 * ema + 0.05 * last_loss
                val = ""
                if self.step % cfg.val_every == 0 or self.step == cfg.steps:
                    last_val = self.validate()
                    val = f"{last_val:.6f}"
                step_log.write({"step": self.step, "loss": f"{last_loss:.6f}", "val_loss": val,
                                "lr": f"{self.scheduler.get_last_lr()[0]:.3e}",
                                "seconds": f"{time.perf_counter() - t0:.4f}"})
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self._save(self.wall_before + time.perf_counter() - t_start, last_loss, last_val, False)
                    saved_at = self.step
                bar.update(1)
                bar.set_postfix(loss=f"{ema:.3f}", val=f"{last_val:.3f}")
                if (self.max_minutes is not None and self.step < cfg.steps
                        and time.perf_counter() - t_start >= 60.0 * self.max_minutes):
                    break
        except KeyboardInterrupt:
            if self.step > saved_at:  # keep the work done so far; --resume continues from here
                self._save(self.wall_before + time.perf_counter() - t_start, last_loss, last_val, False)
            raise
        finally:
            bar.close()
            step_log.close()
        wall = self.wall_before + time.perf_counter() - t_start
        finished = self.step >= cfg.steps
        if saved_at != self.step or not (self.out / "extractor.pt").exists():
            self._save(wall, last_loss, last_val, finished)
        self._write_config(wall, last_loss, last_val, finished=finished)
        plot_loss_curve(log_path, self.out / "loss_curve.png")
        if not finished:
            log.info("stopped after %.1f min at step %d of %d (--max-minutes); --resume continues the run",
                     (time.perf_counter() - t_start) / 60.0, self.step, cfg.steps)
        return {"out": str(self.out), "steps": self.step, "total_steps": cfg.steps, "finished": finished,
                "loss": last_loss, "val_loss": last_val, "wall_time_s": wall,
                "extractor": str(self.out / "extractor.pt")}


def _read_json(path: Path) -> dict[str, Any]:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"{path}: the run's config.json is missing, cannot resume")
    return json.loads(path.read_text())


def _version() -> str:
    try:
        from maskgen import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def plot_loss_curve(log_csv: str | Path, path: str | Path) -> Path | None:
    """Training loss (raw and moving average) and validation loss against step."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        steps, loss, vsteps, vloss = [], [], [], []
        with Path(log_csv).open() as f:
            for r in csv.DictReader(f):
                steps.append(int(r["step"]))
                loss.append(float(r["loss"]))
                if r.get("val_loss"):
                    vsteps.append(int(r["step"]))
                    vloss.append(float(r["val_loss"]))
        fig = Figure(figsize=(7.0, 4.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        s, lo = np.array(steps), np.array(loss)
        if lo.size:
            ax.plot(s, lo, color="tab:blue", alpha=0.25, lw=0.8, label="train loss")
            w = int(min(50, max(1, lo.size // 10)))
            if w > 1:
                ax.plot(s[w - 1:], np.convolve(lo, np.ones(w) / w, mode="valid"), color="tab:blue", lw=1.6,
                        label=f"moving average ({w})")
        if vloss:
            ax.plot(vsteps, vloss, "o-", color="tab:green", ms=3, label="validation loss (fixed pairs)")
        ax.set_xlabel("step")
        ax.set_ylabel("SupCon loss")
        ax.set_title("maskgen pretrain-extractor")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        return atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
        log.warning("could not plot the loss curve: %s", e)
        return None


def pretrain_extractor(out_dir: str | Path, cfg: PretrainConfig | None = None, resume: bool = False,
                       overwrite: bool = False, progress: bool = True, given: Sequence[str] = (),
                       max_minutes: float | None = None) -> dict[str, Any]:
    return Pretrainer(out_dir, cfg, resume=resume, overwrite=overwrite, progress=progress, given=given,
                      max_minutes=max_minutes).run()


# ------------------------------------------------------------------------------------------------- CLI
PRETRAIN_FLAGS: dict[str, tuple[type, str]] = {
    "steps": (int, "training steps"),
    "crop": (int, "cubic crop size in voxels (multiple of 2**depth, >= 2**(depth+1))"),
    "batch_size": (int, "view pairs per step"),
    "base_width": (int, "UNet width at full resolution (anatomix: 16)"),
    "depth": (int, "UNet poolings (anatomix: 4)"),
    "out_channels": (int, "feature channels of the output layer (anatomix: 16)"),
    "norm": (str, "batch (anatomix) or instance (anatomix-dev)"),
    "lr": (float, "AdamW learning rate"),
    "weight_decay": (float, "AdamW weight decay"),
    "temperature": (float, "SupCon temperature"),
    "num_points": (int, "voxels sampled per layer and pair"),
    "proj_dim": (int, "projection head width (anatomix: 256)"),
    "val_every": (int, "validation loss on fixed pairs every N steps"),
    "checkpoint_every": (int, "write checkpoint_latest.pt and extractor.pt every N steps"),
    "seed": (int, "random seed (anatomix: 1234567)"),
    "device": (str, "auto, cpu, cuda, cuda:1, ..."),
}
