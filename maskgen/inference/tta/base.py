"""The test-time-adaptation interface: one object per prediction run that turns a volume into probabilities.

Why: TTA baselines (paper section 4.3, appendix C.6) see the unlabelled test volume before answering, each
in its own way (BatchNorm entropy minimisation, logit mixing with a second model, pseudo-label fine-tuning).
``Predictor`` stays free of any of that: it preprocesses, calls ``tta.predict_volume`` and maps the
probabilities back onto the input's grid. The default, ``none``, is plain sliding-window inference.

"Logits" of a sliding-window prediction are taken as the log of the Gaussian-blended softmax. They equal
the network's logits up to a per-voxel constant wherever one window covers a voxel, so every softmax-based
combination below (temperature, logit mixing, products of experts) is unchanged by that choice.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from maskgen.registry import Registry

log = logging.getLogger("maskgen")

class Segmenter(Protocol):
    """What an adaptation may use of the predictor it serves (``maskgen.inference.predict.Predictor``).

    Declared here so adaptations never import the predictor that imports them.
    """

    cfg: Any  # the run's TrainConfig
    method: torch.nn.Module
    extractor: torch.nn.Module | None
    device: torch.device
    run_dir: Path
    checkpoint: str
    feature_mask: str | None

    def window_probs(self, image: torch.Tensor) -> torch.Tensor: ...


TTAS: Registry = Registry("test-time adaptation")
register_tta = TTAS.register
EPS = 1e-8


@dataclass(frozen=True)
class TTAOption:
    """One option an adaptation declares (its ``__init__`` keyword); the CLI makes ``flag`` from it."""

    flag: str
    type: type
    help: str


def tta_options() -> dict[str, tuple[str, type, list[tuple[str, str, Any]]]]:
    """Option name -> (flag, type, [(tta name, help, default), ...]) over every registered adaptation,
    so ``maskgen predict --help`` is generated from what each adaptation declares."""
    table: dict[str, tuple[str, type, list[tuple[str, str, Any]]]] = {}
    for name, cls in sorted(TTAS.items()):
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
        for key, opt in cls.OPTIONS.items():
            flag, typ, uses = table.setdefault(key, (opt.flag, opt.type, []))
            if (flag, typ) != (opt.flag, opt.type):
                raise ValueError(f"tta {name!r} declares option {key!r} as {opt.flag} {opt.type.__name__}, "
                                 f"another as {flag} {typ.__name__}")
            uses.append((name, opt.help, defaults.get(key)))
    return table


def build_tta(name: str | None, **options: Any) -> TTA:
    """The TTA named ``name`` (None: ``none``) built with ``options``; options set to None take the TTA's
    default, and a set option the TTA does not declare is an error (it would otherwise be silently ignored)."""
    cls = TTAS.lookup(name or "none")
    given = {k: v for k, v in options.items() if v is not None}
    unused = sorted(set(given) - set(cls.OPTIONS))
    if unused:
        table = tta_options()
        flags = ", ".join(table[k][0] if k in table else k for k in unused)
        raise ValueError(f"tta {cls.name!r} does not use {flags}")
    return cls(**given)


class TTA:
    """Base class and the default (``none``): plain Gaussian-blended sliding-window inference."""

    name = "none"
    SUMMARY = "plain sliding-window inference"
    #: the options ``__init__`` takes, keyed by keyword (``maskgen predict`` flags are made from them)
    OPTIONS: dict[str, TTAOption] = {}

    def setup(self, predictor: Segmenter) -> None:
        """Called once by ``Predictor.__init__`` with the ready predictor (load extra runs, tune on val)."""

    def predict_volume(self, predictor: Segmenter, image: torch.Tensor, name: str | None = None) -> torch.Tensor:
        """Softmax probabilities (C, D, H, W) for one preprocessed image (1, D, H, W), on the same grid.

        Must leave ``predictor.method`` exactly as it found it, so that volumes are independent."""
        return predictor.window_probs(image)

    def report(self) -> dict[str, Any] | None:
        """What to record in ``tta.json`` next to the masks (None: nothing to record)."""
        return None


register_tta("none")(TTA)


# ----------------------------------------------------------------------------------------------- helpers
def batchnorm_layers(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def log_probs(probs: torch.Tensor) -> torch.Tensor:
    """Log of (blended) probabilities, clamped so that a zero probability stays finite."""
    return torch.log(probs.clamp_min(EPS))


def entropy_map(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy per voxel, (B, D, H, W), from logits (B, C, D, H, W)."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def model_logits(predictor: Segmenter, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``predictor.method`` on a batch of crops (B, 1, D, H, W), with the run's frozen features and
    its ``feature_mask``; gradients flow into the method's parameters only (the extractor runs under no_grad)."""
    method, extractor = predictor.method, predictor.extractor
    feats = extractor(x) if (method.uses_features and extractor is not None) else None
    if predictor.feature_mask == "image":
        x = torch.zeros_like(x)
    elif predictor.feature_mask == "features" and feats is not None:
        feats = torch.zeros_like(feats)
    return method(x, feats).float()


def pad_to(x: torch.Tensor, size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the last three axes of ``x`` (C, D, H, W) up to at least ``size`` (symmetrically, like the
    training sampler); also returns a (D, H, W) mask of the real voxels."""
    spatial = x.shape[-3:]
    pads: list[int] = []
    for s, p in zip(reversed(spatial), reversed(size)):
        extra = max(int(p) - int(s), 0)
        pads += [extra // 2, extra - extra // 2]
    valid = torch.ones(spatial, dtype=torch.bool, device=x.device)
    if not any(pads):
        return x, valid
    return F.pad(x, pads), F.pad(valid, pads)


def random_starts(shape: tuple[int, ...], patch: tuple[int, ...], n: int, rng: np.random.Generator) -> list[tuple]:
    """``n`` uniformly random crop corners of size ``patch`` inside a volume of ``shape`` (already padded)."""
    return [tuple(int(rng.integers(s - p + 1)) for s, p in zip(shape, patch)) for _ in range(n)]


def crop(x: torch.Tensor, start: tuple[int, ...], patch: tuple[int, ...]) -> torch.Tensor:
    return x[(..., *(slice(s, s + p) for s, p in zip(start, patch)))]


def mean_foreground_dice(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> float:
    """Mean Dice over foreground classes present in prediction or reference (as ``Trainer.validate``); reference
    voxels of index ``n_classes`` and above (the ignore label) count for no class."""
    from maskgen.metrics import dice_per_class, drop_ignored

    pred, ref = drop_ignored(pred, np.where(np.asarray(ref) >= n_classes, n_classes, ref), n_classes)
    d = dice_per_class(pred, ref, list(range(1, n_classes)))
    vals = [v for v in d.values() if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def validation_volumes(predictor: Segmenter, split: str = "val") -> list[dict[str, Any]]:
    """The run's validation cases (or those of another ``split``: ``train``), split exactly as training split
    them, preprocessed with the run's settings."""
    from maskgen.data.nnunet import load_dataset
    from maskgen.data.preprocess import load_case

    cfg = predictor.cfg
    if not Path(cfg.dataset).is_dir():
        raise FileNotFoundError(f"{cfg.dataset}: the run's dataset is not there, so its validation cases cannot be "
                                "read for tuning")
    spec = load_dataset(cfg.dataset, splits_file=cfg.splits, train_subjects=cfg.train_subjects, seed=cfg.seed,
                        check=False)
    cases = [c for c in spec.split(split) if c.label is not None]
    if not cases:
        what = "validation cases to tune on" if split == "val" else f"{split} cases"
        raise ValueError(f"{cfg.dataset}: the run has no labelled {what}")
    vols = []
    for c in cases:
        v = load_case(c.images, c.label, cfg.spacing, cfg.image_modalities(), cfg.class_values, cfg.ignore_value)
        vols.append({"case": c.case_id, "image": v["image"].as_tensor(), "label": v["label"].as_tensor()[0]})
    return vols


def load_stable(predictor: Segmenter, stable_run: str | Path) -> Segmenter:
    """The features-only ("stable") run, loaded like the main run and checked to be combinable with it."""
    # built by the predictor's own class, so adaptations never import the predictor (imports only go down)
    stable = type(predictor)(stable_run, checkpoint=predictor.checkpoint, device=str(predictor.device))
    if stable.cfg.channel_values() != predictor.cfg.channel_values():
        raise ValueError(f"--stable-run {stable_run} predicts label values {stable.cfg.channel_values()} but --run "
                         f"{predictor.run_dir} predicts {predictor.cfg.channel_values()}")
    if stable.cfg.method != "reps_only":
        log.warning("--stable-run %s was trained with method %r, not the features-only 'reps_only'",
                    stable_run, stable.cfg.method)
    for key in ("spacing", "modality"):
        a, b = getattr(stable.cfg, key), getattr(predictor.cfg, key)
        if a != b:
            log.warning("--stable-run %s has %s %s but --run has %s; both models see the --run's preprocessing",
                        stable_run, key, a, b)
    return stable


class Restore:
    """Context manager: snapshot a module's weights, buffers, requires_grad flags and train/eval modes, and
    put them all back on exit (also after an error), so that each test volume starts from the trained model."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __enter__(self) -> Restore:
        m = self.module
        self.state = {k: v.detach().clone() for k, v in m.state_dict().items()}
        self.grads = {n: p.requires_grad for n, p in m.named_parameters()}
        self.modes = {n: sub.training for n, sub in m.named_modules()}
        self.momenta = {n: sub.momentum for n, sub in m.named_modules() if hasattr(sub, "momentum")}
        return self

    def __exit__(self, *exc) -> None:
        m = self.module
        m.load_state_dict(self.state)
        for n, p in m.named_parameters():
            p.requires_grad_(self.grads[n])
            p.grad = None
        for n, sub in m.named_modules():
            sub.training = self.modes[n]
            if n in self.momenta:
                sub.momentum = self.momenta[n]
