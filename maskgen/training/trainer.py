"""The training loop: method-agnostic, resumable, validating by sliding window and keeping the best.

The trainer knows nothing of any method: it samples augmented patches, asks the frozen extractor for
features when the method reads them, and asks the method for a loss.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from maskgen import distributed
from maskgen.data.augment import build_augmentation
from maskgen.data.nnunet import DatasetSpec, load_dataset
from maskgen.data.preprocess import load_case, median_spacing
from maskgen.data.sampling import PatchSampler, round_up
from maskgen.device import autocast, place_model, resolve_device
from maskgen.io import OutputExistsError, atomic_torch_save, is_atomic_temporary
from maskgen.metrics import dice_per_class, drop_ignored
from maskgen.runtime.build import build_extractor_from_config, build_method_from_config
from maskgen.runtime.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from maskgen.runtime.config import TrainConfig
from maskgen.runtime.sliding import sliding_window_probs
from maskgen.steplog import StepLog, truncate_step_log
from maskgen.training.case_record import CASES_FILE, check_case_record, write_case_record
from maskgen.training.grad_check import FILE as GRAD_CHECK_FILE
from maskgen.training.grad_check import GradientCheck
from maskgen.training.losses import segmentation_loss

LOG_FIELDS = ["step", "loss", "lr", "val_dice", "seconds"]
PAPER_CROP = 128

log = logging.getLogger("maskgen")


#: what a start that ended before its first checkpoint leaves behind; such a folder never blocks a rerun
FAILED_START_FILES = {"config.yaml", "train.log", "log.csv", "training_curves.png", CASES_FILE, GRAD_CHECK_FILE}


def is_restartable(run_dir: Path) -> bool:
    """True for a missing folder or one holding only what a start without any checkpoint writes (a kill
    between the first best and latest checkpoints leaves a best one alone: the run had nothing to resume)."""
    if not run_dir.is_dir():
        return True
    left = FAILED_START_FILES | ({"checkpoint_best.pt"} if not (run_dir / "checkpoint_latest.pt").exists() else set())
    return all(p.name in left or is_atomic_temporary(p.name) for p in run_dir.iterdir())


def cosine_factor(step: int, total: int) -> float:
    """Per-step cosine decay from 1 to 0 over the whole run."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True,
                 given: set[str] | None = None):
        """``given``: the settings the user gave explicitly (the CLI's flags); on ``resume`` only those are
        checked against the saved run. None checks every setting of ``cfg``."""
        cfg = replace(cfg, hparams=dict(cfg.hparams)).with_absolute_paths()
        self.run_dir = Path(cfg.out)
        self.progress = progress
        cfg_path = self.run_dir / "config.yaml"
        latest = self.run_dir / "checkpoint_latest.pt"
        if resume and latest.is_file():
            cfg = self._resumed_config(cfg, TrainConfig.load(cfg_path), given)
        elif resume:
            if not is_restartable(self.run_dir):
                raise FileNotFoundError(f"{latest}: nothing to resume (no latest checkpoint in the run folder)")
            log.warning("%s: no checkpoint to resume from (the earlier start ended before its first one); "
                        "starting from step 0", self.run_dir)
            resume = False
        elif self.run_dir.exists() and any(self.run_dir.iterdir()) and not overwrite:
            if not is_restartable(self.run_dir):
                raise OutputExistsError(
                    f"{self.run_dir}: run folder already exists and is not empty; use --resume to continue it, "
                    "--overwrite to start again, or choose another --out"
                )
            log.info("%s: an earlier start left no checkpoint; starting again", self.run_dir)
        self.resume = resume
        self.cfg = cfg
        #: this process's place in a torchrun job (one process: rank 0 of 1); rank 0 alone writes files
        self.dist = distributed.from_env()
        self.device = distributed.device_for(self.dist, resolve_device(cfg.device))
        self._own_group = distributed.setup(self.dist, self.device)
        self.progress = progress and self.dist.is_main
        distributed.barrier(self.dist)  # every rank has checked the folder before rank 0 writes into it

    def _resumed_config(self, cfg: TrainConfig, saved: TrainConfig, given: set[str] | None) -> TrainConfig:
        """The saved run's configuration with what resume may change; any other difference is refused."""
        cfg_path = self.run_dir / "config.yaml"
        if given is None or "dataset" in given:
            moved = not Path(saved.dataset).is_dir()
            if os.path.abspath(saved.dataset) != cfg.dataset and not moved:
                raise ValueError(f"{cfg_path}: the run was trained on {saved.dataset}, not {cfg.dataset}; "
                                 "--resume continues the same run (use another --out for a new one)")
            if moved:
                log.warning("%s: the run's dataset %s is gone; resuming on %s, checked to give the same "
                            "training and validation cases", cfg_path, saved.dataset, cfg.dataset)
                saved.dataset = cfg.dataset
        saved.out = cfg.out  # the run folder is where it is now (it may have been moved or copied)
        if saved.splits is not None and cfg.splits is not None and not Path(saved.splits).exists():
            saved.splits = cfg.splits  # moved with its dataset or benchmark folder
        checked = None if given is None else set(given) - {"dataset", "out"}
        conflicts = replace(cfg, dataset=saved.dataset, out=saved.out).conflicts_with(saved, checked)
        if conflicts:
            raise ValueError(
                f"{cfg_path}: --resume cannot change the run's settings ({'; '.join(conflicts)}); only "
                f"{', '.join('--' + k.replace('_', '-') for k in TrainConfig.RESUMABLE_CHANGES)} may change. "
                "Drop those flags to continue the run as it was, or start a new run with another --out"
            )
        for name in TrainConfig.RESUMABLE_CHANGES:
            if given is None or name in given:  # a setting not given keeps its saved value
                if getattr(cfg, name) != getattr(saved, name):
                    log.info("resume: %s changed from %s to %s", name, getattr(saved, name), getattr(cfg, name))
                setattr(saved, name, getattr(cfg, name))
        return saved

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Build the data, extractor, method, optimizer and schedule (what ``run`` does before its loop); public
        so a profiler or a notebook can step the same objects."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        self.spec: DatasetSpec = load_dataset(
            cfg.dataset, splits_file=cfg.splits, train_subjects=cfg.train_subjects, seed=cfg.seed, progress=self.progress
        )
        train_cases, val_cases = self.spec.split("train"), self.spec.split("val")
        if not train_cases:
            raise ValueError(f"{cfg.dataset}: no training cases")
        if self.resume:
            check_case_record(self.run_dir, cfg.dataset, train_cases, val_cases)
        main = self.dist.is_main
        if main:  # the run folder is created only once the dataset has passed its checks
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.run_dir.iterdir():  # what a kill during an atomic write left behind
                if stale.is_file() and is_atomic_temporary(stale.name):
                    stale.unlink(missing_ok=True)
        self.file_log = _run_file_log(self.run_dir / "train.log") if main else _silent_log()
        cfg.modality = self.spec.modality
        cfg.channels, cfg.modalities = self.spec.channels, self.spec.modalities
        cfg.n_classes = self.spec.n_classes
        cfg.label_names = {k: v for k, v in self.spec.labels.items() if v != self.spec.ignore_value}
        cfg.ignore_value = self.spec.ignore_value
        if cfg.class_values is None:
            cfg.class_values = self.spec.class_values
        elif list(cfg.class_values) != self.spec.class_values:
            raise ValueError(f"{cfg.dataset}: dataset.json now declares label values {self.spec.class_values}, "
                             f"the run was started with {cfg.class_values}")
        if cfg.spacing is None:
            cfg.spacing = list(median_spacing([c.image for c in train_cases]))  # channels share one grid
        self.extractor = build_extractor_from_config(cfg)
        cfg.feature_channels = self.extractor.out_channels if self.extractor is not None else 0
        if self.extractor is not None:
            self.extractor.to(self.device)
        self.train_vols = [
            load_case(c.images, c.label, cfg.spacing, cfg.modalities, cfg.class_values, cfg.ignore_value)
            for c in tqdm(train_cases, desc="load train", disable=not self.progress, leave=False)
        ]
        self.val_cases = val_cases
        self.val_vols = [
            load_case(c.images, c.label, cfg.spacing, cfg.modalities, cfg.class_values, cfg.ignore_value)
            for c in tqdm(val_cases, desc="load val", disable=not self.progress, leave=False)
        ]
        self.method = place_model(build_method_from_config(cfg, self.extractor), self.device)
        cfg.hparams = dict(self.method.hparams)  # config.yaml records every resolved value, defaults included
        cfg.patch_size = self._resolve_patch(cfg.patch_size)
        if main:
            if not self.resume:
                self._discard_previous_run()
            if not self.resume or not (self.run_dir / CASES_FILE).is_file():
                write_case_record(self.run_dir, train_cases, val_cases)
            cfg.save(self.run_dir / "config.yaml")
        self.criterion = segmentation_loss(cfg.ignore_index)
        self.step_module = self._distributed_step()
        self.optimizer = torch.optim.AdamW(self.method.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cosine_factor(s, cfg.steps))
        self.step = 0
        self.best_dice = -1.0
        self.best_step = -1

    def _distributed_step(self) -> torch.nn.Module:
        """The module one training step calls: the method's loss, wrapped in DistributedDataParallel under
        torchrun (gradients averaged over ranks; BatchNorm synchronised where CUDA allows it)."""
        step = _TrainingStep(self.method, self.criterion)
        if not self.dist.enabled:
            return step
        if self.device.type == "cuda":
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # some methods leave parameters out of a step (rsc, dsbn branches): DDP must look for them
        return torch.nn.parallel.DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)

    def _discard_previous_run(self) -> None:
        """Starting again (--overwrite): drop the old run's checkpoints and test results now, after the
        dataset checked out, so a new run interrupted before its first validation never leaves a stale
        ``checkpoint_best`` that ``predict`` would take for its own."""
        import shutil

        for name in ("checkpoint_best.pt", "checkpoint_latest.pt"):
            (self.run_dir / name).unlink(missing_ok=True)
        if (self.run_dir / "test").is_dir():
            shutil.rmtree(self.run_dir / "test")

    def _resolve_patch(self, patch: list[int] | None) -> list[int]:
        m = self.method.size_multiple
        if patch is None:
            shapes = np.array([v["image"].shape[1:] for v in self.train_vols])
            med = np.median(shapes, axis=0)
            patch = [min(PAPER_CROP, round_up(int(s), m)) for s in med]
        patch = [int(p) for p in patch]
        if len(patch) != 3:
            raise ValueError(f"patch size needs 3 values, got {patch}")
        bad = [p for p in patch if p % m or p < 2 * m]
        if bad:
            raise ValueError(
                f"patch size {patch}: each side must be a multiple of {m} and at least {2 * m} for a UNet with "
                f"{self.cfg.n_poolings} poolings; lower --n-poolings or change --patch-size"
            )
        return patch

    # ------------------------------------------------------------- checkpoints
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_dice": self.best_dice,
            "best_step": self.best_step,
            "config": self.cfg.to_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir / "checkpoint_latest.pt", map_location=self.device)
        self.method.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.best_dice = float(ckpt["best_dice"])
        self.best_step = int(ckpt["best_step"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if self.dist.is_main:  # rank 0 alone touches the log (another rank's rewrite would race its appends)
            truncate_step_log(self.run_dir / "log.csv", self.step, LOG_FIELDS)
        self._note("resumed from step %d (best val Dice %.4f at step %d)", self.step, self.best_dice, self.best_step)

    # -------------------------------------------------------------- validation
    def validate(self) -> float:
        """Mean foreground Dice over validation volumes (sliding window, overlap ``val_overlap``)."""
        if not self.val_vols:
            return float("nan")
        labels = list(range(1, self.cfg.n_classes))
        scores = []
        for vol in self.val_vols:
            probs = sliding_window_probs(
                self.method, self.extractor, vol["image"], self.cfg.patch_size, self.cfg.val_overlap, self.device, self.cfg.amp
            )
            pred, ref = drop_ignored(probs.argmax(0).numpy(), vol["label"][0].numpy(), self.cfg.ignore_index)
            d = dice_per_class(pred, ref, labels)
            vals = [v for v in d.values() if not math.isnan(v)]
            scores.append(float(np.mean(vals)) if vals else float("nan"))
        return float(np.nanmean(scores))

    # ------------------------------------------------------------------- train
    def run(self) -> dict[str, Any]:
        self.setup()
        cfg = self.cfg
        if self.resume:
            self._restore()
        self._note(
            "method=%s hparams=%s extractor=%s patch=%s spacing=%s steps=%d device=%s",
            cfg.method, self.method.hparams, cfg.extractor if self.extractor else "none", cfg.patch_size,
            cfg.spacing, cfg.steps, self.device,
        )
        sampler = PatchSampler(
            self.train_vols,
            cfg.patch_size,
            build_augmentation(cfg.aug_prob, flips=cfg.flips),
            fg_fraction=cfg.fg_fraction,
            seed=cfg.seed + self.step + 1_000_003 * self.dist.rank,  # each rank its own patches
            ignore_index=cfg.ignore_index,
        )
        loader = DataLoader(
            sampler,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_single_thread_worker,
        )
        main = self.dist.is_main
        step_log = (StepLog(self.run_dir / "log.csv", LOG_FIELDS + list(self.method.DIAGNOSTICS), self.resume)
                    if main else None)
        grad_check = (GradientCheck(self.method, self.extractor, self.val_vols or self.train_vols, cfg.patch_size,
                                    cfg.batch_size, self.criterion, self.device, self.run_dir, self.resume, self.step,
                                    seed=cfg.seed)
                      if main and cfg.grad_check_every > 0 else None)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.method}", disable=not self.progress)
        self.method.train()
        it = iter(loader)
        last_val = float("nan")
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                batch = next(it)
                image = batch["image"].to(self.device, non_blocking=True)
                target = batch["label"].to(self.device, non_blocking=True).long()
                feats = self.extractor(image) if self.extractor is not None and self.method.uses_features else None
                with autocast(self.device, cfg.amp):
                    loss, diagnostics = self.step_module(image, feats, target)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                loss_v = distributed.mean_over_ranks(float(loss.detach()), self.dist)
                if not math.isfinite(loss_v):
                    raise FloatingPointError(f"loss became {loss_v} at step {self.step}; lower --lr or check the data")
                val, improved = "", False
                checkpoint_now = main and (self.step % cfg.val_every == 0 or self.step == cfg.steps)
                if checkpoint_now:
                    last_val = self.validate()
                    val = f"{last_val:.5f}"
                    improved = not math.isnan(last_val) and last_val > self.best_dice
                    if improved or not self.val_vols:
                        self.best_dice, self.best_step = (last_val if improved else self.best_dice), self.step
                if step_log is not None:
                    step_log.write({"step": self.step, "loss": f"{loss_v:.6f}",
                                    "lr": f"{self.scheduler.get_last_lr()[0]:.3e}", "val_dice": val,
                                    "seconds": f"{time.perf_counter() - t0:.4f}",
                                    **{k: f"{float(v):.6g}" for k, v in diagnostics.items()}})
                if grad_check is not None and self.step % cfg.grad_check_every == 0:
                    grad_check(self.step)
                # the step's row is on disk before the checkpoint that claims it, so a kill in between
                # never loses a row (resume drops rows after its checkpoint instead)
                if checkpoint_now:
                    ckpt = self._checkpoint()
                    if improved or not self.val_vols:
                        atomic_torch_save(ckpt, self.run_dir / "checkpoint_best.pt")
                    atomic_torch_save(ckpt, self.run_dir / "checkpoint_latest.pt")
                    self._note("step %d loss %.4f val Dice %.4f (best %.4f @ %d)", self.step, loss_v, last_val,
                             self.best_dice, self.best_step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_v:.3f}", val=f"{last_val:.3f}", best=f"{self.best_dice:.3f}")
        finally:
            bar.close()
            if step_log is not None:
                step_log.close()
            if grad_check is not None:
                grad_check.close()
            for h in self.file_log.handlers:
                h.flush()
        if main:
            self._plot()
        distributed.barrier(self.dist)
        if self._own_group:
            torch.distributed.destroy_process_group()
        for h in list(self.file_log.handlers):
            self.file_log.removeHandler(h)
            h.close()
        result = {"best_val_dice": self.best_dice, "best_step": self.best_step, "steps": self.step,
                  "run_dir": str(self.run_dir)}
        return result

    def _note(self, msg: str, *args: Any, level: int = logging.INFO) -> None:
        """To ``train.log`` always, and to the ``maskgen`` logger, which the caller configures (rank 0 only)."""
        if not self.dist.is_main:
            return
        log.log(level, msg, *args)
        self.file_log.log(level, msg, *args)

    def _plot(self) -> None:
        try:
            from maskgen.training.curves import plot_training_curves

            plot_training_curves(self.run_dir / "log.csv", self.run_dir / "training_curves.png",
                                 title=f"{self.cfg.method} on {Path(self.cfg.dataset).name}")
        except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
            self._note("could not plot training curves: %s", e, level=logging.WARNING)


def _single_thread_worker(_: int) -> None:
    # augmentation workers must not compete with the training step for every core
    torch.set_num_threads(1)


class _TrainingStep(torch.nn.Module):
    """``method.training_loss`` as a module's forward, so DistributedDataParallel can wrap one step."""

    def __init__(self, method: torch.nn.Module, criterion: torch.nn.Module):
        super().__init__()
        self.method = method
        self.criterion = criterion

    def forward(self, image: torch.Tensor, feats: torch.Tensor | None, target: torch.Tensor):
        return self.method.training_loss(image, feats, target, self.criterion)


def _silent_log() -> logging.Logger:
    """Ranks other than 0 write no ``train.log``."""
    logger = logging.getLogger("maskgen.runlog.silent")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


def _run_file_log(path: Path) -> logging.Logger:
    """A logger that writes ``train.log`` only: it does not propagate, so the caller's logging (levels,
    handlers, the root logger) is left exactly as the caller set it."""
    logger = logging.getLogger(f"maskgen.runlog.{path.parent.resolve()}")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(h)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
