"""``maskgen demo``: the whole pipeline on the embedded phantom benchmark, ERM against MaskGen.

Generates the phantom (train on one MR contrast; test in-domain and on unseen contrasts and CT), trains
both methods with the same seeds and budget, tests the best checkpoint of each on every test domain,
and writes a table (CSV + JSON) and figures. Rerunning continues unfinished runs and skips finished ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.data.volumes import load_volume
from maskgen.io import OutputExistsError, atomic_write_json, atomic_write_text


@dataclass
class DemoSettings:
    """Budgets sized for 2 CPU cores (see docs/results.md for why the learning rate is raised)."""

    shape: tuple[int, int, int] = (64, 64, 64)
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    n_train: int = 8
    n_val: int = 2
    n_test: int = 4
    steps: int = 800
    val_every: int = 100
    lr: float = 3e-3
    batch_size: int = 4
    patch_size: tuple[int, int, int] = (32, 32, 32)
    base_width: int = 16
    n_poolings: int = 3
    #: arm name -> (method, hyper-parameters[, TrainConfig overrides such as another extractor]);
    #: every arm gets the same seeds, data and budget
    arms: dict[str, tuple] = field(
        default_factory=lambda: {"erm": ("erm", {}), "maskgen": ("maskgen", {"mask_rate": 0.5})}
    )
    seeds: tuple[int, ...] = (0,)
    num_workers: int = 1
    extractor: str = "mind"
    extractor_weights: str | None = None


FULL = DemoSettings()
QUICK = DemoSettings(shape=(32, 32, 32), spacing=(4.0, 4.0, 4.0), n_train=4, n_val=1, n_test=1, steps=150,
                     val_every=50, patch_size=(32, 32, 32), base_width=4, n_poolings=2, num_workers=0)


def run_demo(out: str | Path, quick: bool = False, overwrite: bool = False, device: str = "auto",
             seeds: list[int] | None = None, settings: DemoSettings | None = None, progress: bool = True,
             steps: int | None = None, val_every: int | None = None, mask_rate: float | None = None,
             base_width: int | None = None, patch_size: list[int] | tuple[int, ...] | None = None) -> dict:
    """Train, test and tabulate every arm of ``settings``; ``steps``/``val_every``/``mask_rate``/``base_width``/
    ``patch_size`` override the preset (the 20-minute default does not converge on 2 CPU cores: README, "Converged")."""
    from maskgen.data.nnunet import load_dataset
    from maskgen.data.phantom import generate_phantom
    from maskgen.evaluation.testing import score_cases
    from maskgen.inference.predict import Predictor
    from maskgen.runtime.config import TrainConfig
    from maskgen.training.trainer import Trainer

    s = replace(settings or (QUICK if quick else FULL))  # a copy: never mutate the module presets
    if seeds:
        s.seeds = tuple(seeds)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be a positive number of training steps, got {steps}")
        s.steps = steps
        s.val_every = min(s.val_every, steps)
    if val_every is not None:
        if val_every < 1:
            raise ValueError(f"--val-every must be a positive number of steps, got {val_every}")
        s.val_every = val_every
    if base_width is not None:
        if base_width < 1:
            raise ValueError(f"--base-width must be a positive number of channels, got {base_width}")
        s.base_width = base_width
    if patch_size is not None:
        m = 2**s.n_poolings
        if len(patch_size) != 3 or any(int(p) < m or int(p) % m for p in patch_size):
            raise ValueError(f"--patch-size must be three multiples of {m} (2**poolings), got {list(patch_size)}")
        s.patch_size = tuple(int(p) for p in patch_size)
    if mask_rate is not None:
        if not 0.0 <= mask_rate < 1.0:
            raise ValueError(f"--mask-rate must lie in [0, 1), got {mask_rate}")
        s.arms = {arm: (m, {**hp, "mask_rate": mask_rate} if m == "maskgen" else hp, *rest)
                  for arm, (m, hp, *rest) in s.arms.items()}
    out = Path(out)
    marker = out / "demo.json"
    if out.exists() and any(out.iterdir()):
        if not marker.exists():
            # never delete a folder we did not create, even with --overwrite
            raise OutputExistsError(f"{out}: folder exists and is not a maskgen demo folder; choose another --out")
        if overwrite:
            import shutil

            shutil.rmtree(out)
        else:
            old = json.loads(marker.read_text()).get("settings") or {}
            new = _jsonable(s)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if changed:
                what = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in changed)
                raise OutputExistsError(
                    f"{out}: holds a demo run with other settings ({what}); pass the same options to continue it, "
                    "--overwrite to start again, or choose another --out"
                )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"settings": _jsonable(s)})

    data_dir = out / "phantom"
    if not (data_dir / "dataset.json").exists():
        generate_phantom(data_dir, n_train=s.n_train, n_val=s.n_val, n_test=s.n_test, shape=s.shape,
                         spacing=s.spacing, seed=1234, overwrite=True, progress=progress)
    splits = data_dir / "splits.csv"
    spec = load_dataset(data_dir, splits_file=splits, progress=False)
    test_cases = [c for c in spec.split("test") if c.label is not None]
    train_domains = sorted(spec.domains.get("train", []))
    ood_case = next((c for c in test_cases if c.domain not in train_domains), test_cases[0])

    all_rows: list[dict[str, Any]] = []
    overlay_preds: dict[str, np.ndarray] = {}
    for seed in s.seeds:
        for arm, (method, hparams, *rest) in s.arms.items():
            overrides = dict(rest[0]) if rest else {}
            run_dir = out / "runs" / f"{arm}_seed{seed}"
            done = run_dir / "test" / "summary.json"
            if not done.exists():
                kwargs = dict(
                    dataset=str(data_dir), out=str(run_dir), method=method, hparams=dict(hparams),
                    extractor=s.extractor, extractor_weights=s.extractor_weights, splits=str(splits),
                    steps=s.steps, batch_size=s.batch_size,
                    patch_size=list(s.patch_size), spacing=list(s.spacing), val_every=s.val_every, lr=s.lr,
                    base_width=s.base_width, n_poolings=s.n_poolings, seed=seed, device=device,
                    num_workers=s.num_workers,
                )
                cfg = TrainConfig(**{**kwargs, **overrides})
                resume = (run_dir / "checkpoint_latest.pt").exists()
                trainer = Trainer(cfg, resume=resume, overwrite=not resume, progress=progress)
                if not resume or trainer_steps_left(run_dir, s.steps):
                    trainer.run()
            predictor = Predictor(run_dir, checkpoint="best", device=device)
            res = score_cases(predictor, test_cases, run_dir / "test", spec.labels, overwrite=True,
                              progress=progress, keep=[ood_case.case_id] if seed == s.seeds[0] else [])
            for r in res["rows"]:
                all_rows.append({"method": arm, "seed": seed, **r})
            if ood_case.case_id in res["predictions"]:
                overlay_preds[arm] = res["predictions"][ood_case.case_id]

    results = aggregate(all_rows, train_domains)
    _write_results(out, all_rows, results)
    table = format_results(results, train_domains)
    atomic_write_text(out / "results.txt", table + "\n")
    _figures(out, results, train_domains, ood_case, overlay_preds)
    print(table)
    print(f"\nresults, figures and runs in {out}")
    return results


def trainer_steps_left(run_dir: Path, steps: int) -> bool:
    from maskgen.runtime.checkpoint import load_checkpoint

    return int(load_checkpoint(run_dir / "checkpoint_latest.pt")["step"]) < steps


def aggregate(rows: list[dict[str, Any]], train_domains: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """results[method][domain] = mean Dice, SE over cases (all seeds pooled), n; plus 'unseen (all)'."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mrows = [r for r in rows if r["method"] == method]
        groups: dict[str, list[float]] = {}
        for r in mrows:
            groups.setdefault(r["domain"], []).append(r["mean_dice"])
            key = "in-domain (all)" if r["domain"] in train_domains else "unseen (all)"
            groups.setdefault(key, []).append(r["mean_dice"])
        out[method] = {d: _stat(v) for d, v in groups.items()}
    return out


def _stat(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float)
    n = len(v)
    return {"mean": float(v.mean()) if n else math.nan,
            "se": float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan, "n": n}


def _domain_order(results: dict, train_domains: list[str]) -> list[str]:
    domains = list(dict.fromkeys(d for m in results.values() for d in m))
    singles = [d for d in domains if "(all)" not in d]
    singles.sort(key=lambda d: (d not in train_domains, d))
    return singles + [d for d in ("in-domain (all)", "unseen (all)") if d in domains]


def format_results(results: dict, train_domains: list[str]) -> str:
    domains = _domain_order(results, train_domains)
    width = max(len(d) for d in domains) + 2
    methods = list(results)
    lines = ["Mean foreground Dice on the phantom test set (± standard error over test cases)", ""]
    lines.append("domain".ljust(width) + "".join(m.rjust(18) for m in methods))
    for d in domains:
        tag = " *" if d in train_domains else ""
        cells = []
        for m in methods:
            st = results[m].get(d)
            cells.append(f"{st['mean']:.3f} ± {st['se']:.3f}".rjust(18) if st else "-".rjust(18))
        lines.append((d + tag).ljust(width) + "".join(cells))
    lines.append("")
    lines.append("* training domain (in-domain test subjects)")
    return "\n".join(lines)


def _write_results(out: Path, rows: list[dict[str, Any]], results: dict) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_json(out / "results.json", _jsonable(results))


def _figures(out: Path, results: dict, train_domains: list[str], case, preds: dict[str, np.ndarray]) -> None:
    from maskgen.evaluation.plots import plot_domain_bars, plot_overlay

    domains = _domain_order(results, train_domains)
    bars = {m: {d: (r[d]["mean"], r[d]["se"]) for d in domains if d in r} for m, r in results.items()}
    plot_domain_bars(bars, out / "dice_by_domain.png", title="Phantom benchmark: test Dice by domain",
                     in_domain=list(train_domains) + ["in-domain (all)"])
    if preds:

        image = load_volume(case.image).get_fdata()
        gt = np.asarray(load_volume(case.label).dataobj)
        plot_overlay(image, gt, preds, out / f"overlay_{case.case_id}.png",
                     title=f"{case.case_id} (unseen domain {case.domain})")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, DemoSettings):
        obj = obj.__dict__
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj
