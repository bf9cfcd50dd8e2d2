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
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from maskgen.data.volumes import load_volume
from maskgen.io import OutputExistsError, atomic_write_json, atomic_write_text


@dataclass
class DemoSettings:
    """Sized for 2 CPU cores (measured: 20.5 minutes with the arms at once; ERM flat over its last quarter,
    MaskGen still gaining 0.017; docs/results.md): the phantom's 128 mm field of view
    at 48^3 voxels of 2.67 mm, 24^3 crops (the same 64 mm of context as 32^3 crops at 2 mm), the benchmark's
    width-8 UNet, 4000 steps, and MaskGen's p as validation chose it in ``configs/benchmark/phantom_demo.yaml``
    (the same settings; docs/results.md). The learning rate is raised for short budgets (docs/results.md)."""

    shape: tuple[int, int, int] = (48, 48, 48)
    spacing: tuple[float, float, float] = (2.6667, 2.6667, 2.6667)
    n_train: int = 8
    n_val: int = 2
    n_test: int = 4
    steps: int = 4000
    val_every: int = 250
    lr: float = 3e-3
    batch_size: int = 4
    patch_size: tuple[int, int, int] = (24, 24, 24)
    base_width: int = 8
    n_poolings: int = 3
    #: arm name -> (method, hyper-parameters[, TrainConfig overrides such as another extractor]);
    #: every arm gets the same seeds, data and budget
    arms: dict[str, tuple] = field(
        default_factory=lambda: {"erm": ("erm", {}), "maskgen": ("maskgen", {"mask_rate": 0.25})}
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
             base_width: int | None = None, patch_size: list[int] | tuple[int, ...] | None = None,
             jobs: int | None = None) -> dict:
    """Train, test and tabulate every arm of ``settings``; ``steps``/``val_every``/``mask_rate``/``base_width``/
    ``patch_size`` override the preset; ``jobs`` arms train at once (default: one per CPU core, one on a GPU)."""
    from maskgen.data.nnunet import load_dataset
    from maskgen.data.phantom import generate_phantom
    from maskgen.evaluation.testing import score_cases
    from maskgen.inference.predict import Predictor
    from maskgen.runtime.config import TrainConfig

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
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
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

    runs = [(arm, seed, method, hparams, dict(rest[0]) if rest else {})
            for seed in s.seeds for arm, (method, hparams, *rest) in s.arms.items()]
    pending = []
    for arm, seed, method, hparams, overrides in runs:
        run_dir = out / "runs" / f"{arm}_seed{seed}"
        if (run_dir / "test" / "summary.json").exists():
            continue
        if (run_dir / "checkpoint_latest.pt").exists() and not trainer_steps_left(run_dir, s.steps):
            continue
        if run_dir.exists() and not (run_dir / "checkpoint_latest.pt").exists():
            import shutil

            shutil.rmtree(run_dir)  # a start killed before its first checkpoint: nothing to keep
        kwargs = dict(
            dataset=str(data_dir), out=str(run_dir), method=method, hparams=dict(hparams),
            extractor=s.extractor, extractor_weights=s.extractor_weights, splits=str(splits),
            steps=s.steps, batch_size=s.batch_size,
            patch_size=list(s.patch_size), spacing=list(s.spacing), val_every=s.val_every, lr=s.lr,
            base_width=s.base_width, n_poolings=s.n_poolings, seed=seed, device=device,
            num_workers=s.num_workers,
        )
        pending.append((f"{arm}_seed{seed}", TrainConfig(**{**kwargs, **overrides})))
    if pending:
        train_arms(pending, out, device=device, jobs=jobs, progress=progress)

    all_rows: list[dict[str, Any]] = []
    overlay_preds: dict[str, np.ndarray] = {}
    convergence: dict[str, dict[str, float]] = {}
    for arm, seed, *_ in runs:
        run_dir = out / "runs" / f"{arm}_seed{seed}"
        convergence[f"{arm}_seed{seed}"] = run_convergence(run_dir, s.steps)
        predictor = Predictor(run_dir, checkpoint="best", device=device)
        res = score_cases(predictor, test_cases, run_dir / "test", spec.labels, overwrite=True,
                          progress=progress, keep=[ood_case.case_id] if seed == s.seeds[0] else [])
        for r in res["rows"]:
            all_rows.append({"method": arm, "seed": seed, **r})
        if ood_case.case_id in res["predictions"]:
            overlay_preds[arm] = res["predictions"][ood_case.case_id]

    results = aggregate(all_rows, train_domains)
    _write_results(out, all_rows, results, convergence)
    table = format_results(results, train_domains) + "\n\n" + format_convergence(convergence, s.steps)
    atomic_write_text(out / "results.txt", table + "\n")
    _figures(out, results, train_domains, ood_case, overlay_preds)
    print(table)
    print(f"\nresults, figures and runs in {out}")
    return results


def default_jobs(device: str, n_runs: int) -> int:
    """Arms trained at once: on a CPU one process per arm (small 3D convolutions scale poorly over threads,
    so two one-thread processes outrun one two-thread process; docs/benchmarks.md), on a GPU one."""
    from maskgen.device import resolve_device

    if n_runs < 2 or resolve_device(device).type != "cpu":
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n_runs, cpus))


def train_arms(pending: list[tuple[str, Any]], out: Path, device: str, jobs: int | None, progress: bool) -> None:
    """Train each ``(name, TrainConfig)`` in its own process (``jobs`` at a time, threads shared evenly),
    resuming any that has a checkpoint; one progress bar over all of them, a log per run in ``out/logs``."""
    from maskgen.benchmark.execute import config_payload, device_slots, run_local

    jobs = jobs or default_jobs(device, len(pending))
    slots = device_slots(min(jobs, len(pending)), [device], None)
    work = [(name, config_payload(cfg), str(out / "logs" / f"{name}.log")) for name, cfg in pending]
    failed: list[str] = []

    def done(name: str, _result: Any, error: str | None) -> None:
        if error:
            failed.append(f"{name}: {error} (log: {out / 'logs' / (name + '.log')})")

    from tqdm import tqdm

    stop = threading.Event()
    # made here, before a one-job run redirects this process's stderr to the run's log
    bar = tqdm(total=sum(cfg.steps for _, cfg in pending), unit="step", disable=not progress,
               desc="train " + ", ".join(name for name, _ in pending))
    watcher = threading.Thread(target=_show_progress, args=(pending, bar, stop), daemon=True)
    watcher.start()
    try:
        run_local(work, slots, done, test=False)
    finally:
        stop.set()
        watcher.join()
        bar.close()
    if failed:
        raise RuntimeError("demo training failed: " + "; ".join(failed))


def _show_progress(pending: list[tuple[str, Any]], bar, stop: threading.Event, every: float = 2.0) -> None:
    """Moves ``bar`` over every arm's steps, read from the runs' ``log.csv`` (the workers draw no bar)."""
    while True:
        stopping = stop.wait(every)
        now = sum(_logged_step(Path(cfg.out) / "log.csv") for _, cfg in pending)
        bar.update(max(0, now - bar.n))
        if stopping:
            return


def _logged_step(log_csv: Path) -> int:
    try:
        with log_csv.open("rb") as f:
            f.seek(max(0, log_csv.stat().st_size - 256))
            last = f.read().decode("utf-8", "replace").strip().splitlines()[-1]
        return int(last.split(",")[0])
    except (OSError, ValueError, IndexError):
        return 0


def run_convergence(run_dir: Path, steps: int) -> dict[str, float]:
    """Best validation Dice, the step it came at, the last-quarter gain (the brief's flatness test) and the
    training seconds of one run, from its ``log.csv``."""
    from maskgen.benchmark.report import last_quarter_gain, train_seconds, validation_curve

    log = run_dir / "log.csv"
    best, best_step = math.nan, 0
    for step, dice in validation_curve(log):
        if not dice <= best:  # the first best, as the trainer keeps it
            best, best_step = dice, step
    return {"best_val_dice": best, "best_step": best_step, "last_quarter_gain": last_quarter_gain(log, steps),
            "train_seconds": train_seconds(log)}


def format_convergence(convergence: dict[str, dict[str, float]], steps: int) -> str:
    from maskgen.benchmark.report import FLAT_TOLERANCE

    lines = [f"Convergence (validation Dice; flat = the last quarter of {steps} steps gains at most "
             f"{FLAT_TOLERANCE} over the best before it)"]
    for name, c in convergence.items():
        gain = c["last_quarter_gain"]
        verdict = "unknown" if math.isnan(gain) else ("flat" if gain <= FLAT_TOLERANCE else "STILL RISING")
        if c["best_val_dice"] == 0.0:
            verdict = "nothing learned"
        lines.append(f"  {name}: best {c['best_val_dice']:.3f} at step {c['best_step']}, last-quarter gain "
                     f"{gain:+.3f} ({verdict}), {c['train_seconds'] / 60:.1f} training minutes")
    return "\n".join(lines)


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


def _write_results(out: Path, rows: list[dict[str, Any]], results: dict, convergence: dict) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_json(out / "results.json", _jsonable(results))
    atomic_write_json(out / "convergence.json", _jsonable(convergence))


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
