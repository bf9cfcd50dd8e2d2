"""Feature stability across imaging domains, measured with linear CKA (MaskGen appendix B.1).

MaskGen rests on one claim: the frozen features g(x) change far less between imaging domains than the
image x does. This module measures it. For co-registered volumes of the same subjects in several domains,
each voxel gives one row of a feature matrix per domain; linear centred kernel alignment (CKA, Kornblith
et al. 2019) between the matrices of the reference domain and of another domain is 1 when one is a
rotation and scaling of the other (the same representation) and near 0 when they are unrelated. The raw
image is scored as a 1-channel "feature" (its linear CKA is the squared Pearson correlation), so the gap
between an extractor's CKA and the image's is the stability the extractor adds. A second test perturbs
the reference image with x -> x**gamma and compares the features of the perturbed and unperturbed image.

Voxels are subsampled (default 20 000, seeded) inside a foreground mask of the reference image, so the
large, trivially similar background does not inflate the score. Images are min-max scaled to [0, 1], as
training does for MR (and for the phantom's CT, whose dataset says "MR").
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgen.analysis.stability_subjects import array_subjects, phantom_subjects, read_pairs
from maskgen.io import atomic_write, atomic_write_json, atomic_write_text, ensure_fresh_dir

DEFAULT_GAMMAS = (0.5, 0.67, 0.8, 1.25, 1.5, 2.0)
#: the name under which the raw (min-max scaled) image is scored as a 1-channel feature
RAW_IMAGE = "image"
MASKS = ("otsu", "nonzero", "all")
DEFAULT_N_VOXELS = 20_000


# ------------------------------------------------------------------------------------------- CKA
def _as_matrix(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    m = np.asarray(x, dtype=np.float64)
    if m.ndim == 1:
        m = m[:, None]
    if m.ndim != 2:
        raise ValueError(f"linear_cka: {what} must be (n samples, channels), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"linear_cka: {what} holds NaN or inf")
    return m


def linear_cka(x: Any, y: Any) -> float:
    """Linear CKA between feature matrices ``x`` (n, c1) and ``y`` (n, c2); rows are samples (voxels).

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc, Yc: in [0, 1], symmetric,
    invariant to orthogonal transforms and isotropic scaling of either side. A 1-D input is one channel.
    NaN when either side is constant (CKA is undefined there).
    """
    xm, ym = _as_matrix(x, "x"), _as_matrix(y, "y")
    if xm.shape[0] != ym.shape[0]:
        raise ValueError(f"linear_cka: x and y need the same number of rows, got {xm.shape[0]} and {ym.shape[0]}")
    if xm.shape[0] < 2:
        raise ValueError("linear_cka: need at least 2 samples")
    xm = xm - xm.mean(axis=0)
    ym = ym - ym.mean(axis=0)
    nx, ny = np.linalg.norm(xm), np.linalg.norm(ym)
    if nx == 0 or ny == 0:
        return float("nan")
    xm, ym = xm / nx, ym / ny  # CKA is scale-invariant; this keeps the products well inside float range
    cross = np.linalg.norm(ym.T @ xm) ** 2
    return float(cross / (np.linalg.norm(xm.T @ xm) * np.linalg.norm(ym.T @ ym)))


# ------------------------------------------------------------------------------------ voxel masks
def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))]) if bins > 1 else float(edges[1])


def foreground_mask(image: np.ndarray, method: str = "otsu") -> np.ndarray:
    """Voxels to sample from: ``otsu`` = above an Otsu threshold with holes filled (the body of an MR or CT
    image), ``nonzero`` = every non-zero voxel (skull-stripped or masked data), ``all`` = every voxel."""
    image = np.asarray(image)
    if method == "all":
        return np.ones(image.shape, bool)
    if method == "nonzero":
        return image != 0
    if method == "otsu":
        from scipy.ndimage import binary_fill_holes

        finite = image[np.isfinite(image)]
        if finite.size == 0 or finite.min() == finite.max():
            return np.zeros(image.shape, bool)
        return binary_fill_holes(image > _otsu_threshold(finite))
    raise ValueError(f"unknown mask method {method!r}; choose one of {', '.join(MASKS)}")


def _minmax(image: np.ndarray, where: str) -> np.ndarray:
    img = np.nan_to_num(np.asarray(image, dtype=np.float32))
    lo, hi = float(img.min()), float(img.max())
    if hi <= lo:
        raise ValueError(f"{where}: the image is constant ({lo}); it has no features to compare")
    return ((img - lo) / (hi - lo)).astype(np.float32)


# ---------------------------------------------------------------------------------- extractors
def _build_extractors(
    names: Sequence[str], kwargs: Mapping[str, Mapping[str, Any]], device: torch.device
) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """Build each extractor; one that cannot be built is skipped (with the reason) unless none is left."""
    from maskgen.extractors import EXTRACTORS, build_extractor
    from maskgen.extractors.combined import SEPARATOR, member_names

    names = list(dict.fromkeys(names))
    members: dict[str, list[str]] = {}
    for n in names:
        if SEPARATOR in n:
            members[n] = member_names(n)
        elif n not in EXTRACTORS or n == "none":
            raise ValueError(f"unknown extractor {n!r}; choose from {sorted(k for k in EXTRACTORS if k != 'none')} "
                             f"or several joined by '{SEPARATOR}'")
    unknown = set(kwargs) - set(names) - {m for ms in members.values() for m in ms}
    if unknown:
        raise ValueError(f"settings given for extractors that were not requested: {sorted(unknown)}")
    built: dict[str, torch.nn.Module] = {}
    skipped: dict[str, str] = {}
    for n in names:
        kw = dict(kwargs.get(n, {}))
        if n in members:  # a combination: its members' weights as NAME=PATH pairs
            pairs = [f"{m}={kwargs[m]['weights']}" for m in members[n] if "weights" in kwargs.get(m, {})]
            kw = {"weights": ",".join(pairs)} if pairs else {}
        try:
            built[n] = build_extractor(n, **kw).to(device)
        except (OSError, ValueError, RuntimeError, ImportError, KeyError, TypeError) as e:
            hint = f" (here: --extractor-weights {n}=PATH)" if isinstance(e, FileNotFoundError) else ""
            skipped[n] = f"{type(e).__name__}: {e}{hint}"
    if names and not built:
        why = "; ".join(f"{n}: {r}" for n, r in skipped.items())
        raise ValueError(f"no extractor could be built ({why})")
    return built, skipped


def _sampled_features(
    ext: torch.nn.Module | None, image01: np.ndarray, idx: np.ndarray, device: torch.device
) -> np.ndarray:
    """(n voxels, C) float64: the features at the flat voxel indices ``idx`` (the image itself if no ext)."""
    if ext is None:
        return image01.reshape(-1)[idx].astype(np.float64)[:, None]
    x = torch.from_numpy(np.ascontiguousarray(image01))[None, None].to(device)
    with torch.no_grad():
        f = ext(x)[0]
    f = f.reshape(f.shape[0], -1)[:, torch.from_numpy(idx).to(device)]
    return f.T.double().cpu().numpy()


# -------------------------------------------------------------------------------------- report
def _mean_se(values: Sequence[float]) -> dict[str, float | int | None]:
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    return {
        "mean": float(v.mean()) if v.size else None,
        "se": float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None,
        "n": int(v.size),
    }


def _gamma_key(g: float) -> str:
    return f"{g:g}"


def stability_report(
    out: str | Path | None = None,
    extractors: Sequence[str] = ("mind",),
    extractor_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    pairs: str | Path | Mapping[str, Mapping[str, Any]] | None = None,
    subjects: int = 3,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    variant: str = "edges",
    domains: Sequence[str] | None = None,
    reference: str | None = None,
    gammas: Sequence[float] = DEFAULT_GAMMAS,
    n_voxels: int = DEFAULT_N_VOXELS,
    mask: str = "otsu",
    seed: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Linear CKA between domains and under gamma perturbations, for each extractor and the raw image.

    Subjects come from ``pairs`` (a CSV path with columns ``subject,domain,image``, or an in-memory
    ``{subject: {domain: 3D array}}``) or, when it is None, from ``subjects`` phantom subjects
    (:func:`maskgen.data.phantom.render_subject`; ``shape``, ``spacing``, ``variant``, ``domains``, default
    all five).
    ``reference`` (default T1w for the phantom, else the first domain listed) is compared with every other
    domain, and its image is the one perturbed by each gamma. ``extractor_kwargs[name]`` is passed to
    ``build_extractor`` (e.g. ``{"anatomix": {"weights": path}}``); an extractor that cannot be built is
    skipped with a warning, unless none can be. With ``out`` the folder (refused when not empty, unless
    ``overwrite``) receives cka_domains.csv, cka_gamma.csv, summary.json and two PNG figures.

    Returns ``{"domains": rows, "gamma": rows, "summary": summary}``; each row is a dict with the CSV columns.
    """
    t0 = time.perf_counter()
    if mask not in MASKS:
        raise ValueError(f"unknown mask method {mask!r}; choose one of {', '.join(MASKS)}")
    if int(n_voxels) < 2:
        raise ValueError(f"n_voxels must be >= 2, got {n_voxels}")
    gammas = [float(g) for g in gammas]
    if any(not math.isfinite(g) or g <= 0 for g in gammas):
        raise ValueError(f"gammas must be positive numbers, got {gammas}")

    if pairs is None:
        from maskgen.data.phantom import DOMAINS

        domains = list(DOMAINS if domains is None else domains)
        reference = reference or "T1w"
        if reference not in domains:
            domains.insert(0, reference)
        subject_list = phantom_subjects(subjects, shape, spacing, domains, seed, variant)
        source: dict[str, Any] = {
            "kind": "phantom", "subjects": int(subjects), "shape": [int(s) for s in shape],
            "spacing": [float(s) for s in spacing], "seed": int(seed), "variant": variant,
        }  # fmt: skip
    elif isinstance(pairs, Mapping):
        subject_list = array_subjects(pairs)
        source = {"kind": "arrays", "subjects": len(subject_list)}
    else:
        subject_list = read_pairs(pairs, None if domains is None else [*domains, *([reference] if reference else [])])
        source = {"kind": "pairs", "csv": str(Path(pairs).resolve()), "subjects": len(subject_list)}
    all_domains = list(dict.fromkeys(d for s in subject_list for d in s.domains))
    reference = reference or all_domains[0]
    if not any(reference in s.domains for s in subject_list):
        raise ValueError(f"reference domain {reference!r} is in no subject; domains present: {all_domains}")
    others = [d for d in all_domains if d != reference]
    if not others and not gammas:
        raise ValueError(f"nothing to measure: only the reference domain {reference!r} and no gammas")

    from maskgen.device import resolve_device

    dev = resolve_device(device)
    built, skipped = _build_extractors(extractors, extractor_kwargs or {}, dev)
    out_dir = ensure_fresh_dir(out, overwrite, what="stability report folder") if out is not None else None
    for name, why in skipped.items():
        print(f"warning: skipping extractor {name!r}, it cannot be built: {why}", file=sys.stderr)
    feature_sources: list[tuple[str, torch.nn.Module | None]] = [(RAW_IMAGE, None), *built.items()]

    dom_rows: list[dict[str, Any]] = []
    gam_rows: list[dict[str, Any]] = []
    used_subjects: list[str] = []
    for k, subj in enumerate(subject_list):
        ts = time.perf_counter()
        if reference not in subj.domains:
            print(f"warning: subject {subj.name!r} has no {reference} image; skipped", file=sys.stderr)
            continue
        raw = subj.load()
        fg = foreground_mask(raw[reference], mask)
        flat = np.flatnonzero(fg)
        if flat.size < 2:
            raise ValueError(f"subject {subj.name!r}: the {mask!r} mask of its {reference} image is empty")
        rng = np.random.default_rng([int(seed), k])
        idx = np.sort(rng.choice(flat, size=min(int(n_voxels), flat.size), replace=False))
        imgs = {d: _minmax(a, f"subject {subj.name!r}, domain {d!r}") for d, a in raw.items()}
        del raw
        for name, ext in feature_sources:
            ref_f = _sampled_features(ext, imgs[reference], idx, dev)
            for d in others:
                if d in imgs:
                    cka = linear_cka(ref_f, _sampled_features(ext, imgs[d], idx, dev))
                    dom_rows.append(
                        {"extractor": name, "reference": reference, "domain": d, "subject": subj.name, "cka": cka}
                    )
            for g in gammas:
                cka = linear_cka(ref_f, _sampled_features(ext, imgs[reference] ** np.float32(g), idx, dev))
                gam_rows.append({"extractor": name, "gamma": g, "subject": subj.name, "cka": cka})
        used_subjects.append(subj.name)
        if verbose:
            print(f"subject {subj.name}: {idx.size} voxels, {time.perf_counter() - ts:.1f} s", file=sys.stderr)
    if not used_subjects:
        raise ValueError(f"no subject has a {reference!r} image")

    names = [n for n, _ in feature_sources]
    summary: dict[str, Any] = {
        "analysis": "feature stability: linear CKA (Kornblith et al. 2019), MaskGen appendix B.1",
        "source": source,
        "reference": reference,
        "domains": others,
        "extractors": names,
        "skipped_extractors": skipped,
        "subjects": used_subjects,
        "n_voxels": int(n_voxels),
        "mask": mask,
        "seed": int(seed),
        "gammas": gammas,
        "device": str(dev),
        "cka_domains": {
            n: {
                d: _mean_se([r["cka"] for r in dom_rows if r["extractor"] == n and r["domain"] == d])
                for d in others
            }
            for n in names
        },
        "cka_gamma": {
            n: {
                _gamma_key(g): _mean_se([r["cka"] for r in gam_rows if r["extractor"] == n and r["gamma"] == g])
                for g in gammas
            }
            for n in names
        },
    }
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    if out_dir is not None:
        atomic_write_text(out_dir / "cka_domains.csv", _csv_text(dom_rows, ["extractor", "reference", "domain", "subject", "cka"]))
        atomic_write_text(out_dir / "cka_gamma.csv", _csv_text(gam_rows, ["extractor", "gamma", "subject", "cka"]))
        if others:
            plot_domains(summary, out_dir / "cka_domains.png")
        if gammas:
            plot_gamma(summary, out_dir / "cka_gamma.png")
        summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(out_dir / "summary.json", summary)
    return {"domains": dom_rows, "gamma": gam_rows, "summary": summary}


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([f"{r[c]:.6f}" if c == "cka" else (_gamma_key(r[c]) if c == "gamma" else r[c]) for c in columns])
    return buf.getvalue()


# -------------------------------------------------------------------------------------- tables
def _fmt(stat: Mapping[str, Any]) -> str:
    if stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.3f}" + ("" if stat.get("se") is None else f" ± {stat['se']:.3f}")


def _table(title: str, cols: list[str], rows: list[tuple[str, list[str]]]) -> str:
    header = [title, *cols]
    body = [[name, *cells] for name, cells in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), "-" * len(line(header)), *(line(r) for r in body)])


def format_table(summary: Mapping[str, Any]) -> str:
    """Two fixed-width tables of mean CKA ± SE: extractor x domain, and extractor x gamma."""
    n = len(summary["subjects"])
    parts = []
    if summary["domains"]:
        parts.append(f"linear CKA with {summary['reference']} (mean ± SE over {n} subjects)")
        parts.append(_table("extractor", list(summary["domains"]), [
            (e, [_fmt(summary["cka_domains"][e][d]) for d in summary["domains"]]) for e in summary["extractors"]
        ]))  # fmt: skip
    if summary["gammas"]:
        keys = [_gamma_key(g) for g in summary["gammas"]]
        parts.append(f"\nlinear CKA of {summary['reference']}**gamma with {summary['reference']} (mean ± SE)")
        parts.append(_table("extractor", [f"γ={k}" for k in keys], [
            (e, [_fmt(summary["cka_gamma"][e][k]) for k in keys]) for e in summary["extractors"]
        ]))  # fmt: skip
    return "\n".join(parts)


# -------------------------------------------------------------------------------------- figures
def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # Agg canvas, no pyplot: no display needed, the caller's backend is untouched
    return fig


def _save(fig, path: Path) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))


def _vals(stats: Mapping[str, Any]) -> tuple[float, float]:
    mean = stats.get("mean")
    se = stats.get("se")
    return (math.nan if mean is None else mean), (0.0 if se is None else se)


def plot_domains(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars: one group per domain, one bar per extractor (raw image first), mean CKA ± SE."""
    domains, names = list(summary["domains"]), list(summary["extractors"])
    fig = _figure((max(4.5, 1.1 * len(domains) * max(1, len(names)) * 0.55 + 2), 3.6))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    x = np.arange(len(domains))
    for i, n in enumerate(names):
        vals = [_vals(summary["cka_domains"][n][d]) for d in domains]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [v[0] for v in vals], width, yerr=[v[1] for v in vals],
               capsize=3, label="raw image" if n == RAW_IMAGE else n, color=f"C{i}")
    ax.set_xticks(x, domains)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"linear CKA with {summary['reference']}")
    ax.set_title(f"Feature stability across domains (n={len(summary['subjects'])}, mean ± SE)")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def plot_gamma(summary: Mapping[str, Any], path: str | Path) -> Path:
    """CKA of features of x**gamma vs features of x, against gamma (log axis), one line per extractor."""
    gammas = list(summary["gammas"])
    order = np.argsort(gammas)
    fig = _figure((5.0, 3.6))
    ax = fig.add_subplot()
    lows = [1.0]
    for i, n in enumerate(summary["extractors"]):
        vals = [_vals(summary["cka_gamma"][n][_gamma_key(gammas[j])]) for j in order]
        lows += [m - e for m, e in vals if math.isfinite(m)]
        ax.errorbar([gammas[j] for j in order], [v[0] for v in vals], yerr=[v[1] for v in vals], marker="o",
                    capsize=3, label="raw image" if n == RAW_IMAGE else n, color=f"C{i}")
    ax.axvline(1.0, color="0.6", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xticks(sorted(gammas), [_gamma_key(g) for g in sorted(gammas)])
    ax.minorticks_off()
    # CKA under mild gamma is close to 1 for every source: zoom in unless some value is low.
    lo = min(lows)
    ax.set_ylim(0 if lo < 0.5 else math.floor((lo - 0.01) * 20) / 20, 1.005 if lo >= 0.5 else 1.05)
    ax.set_xlabel("gamma (x → x**gamma)")
    ax.set_ylabel("linear CKA with unperturbed")
    ax.set_title(f"Stability under gamma ({summary['reference']}, n={len(summary['subjects'])})")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, Path(path))


# ------------------------------------------------------------------------------------------ CLI
def parse_weights(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--extractor-weights expects NAME=PATH, got {item!r}")
        out.setdefault(name, {})["weights"] = path
    return out


def _stability_declaration() -> None:
    from maskgen.analysis.registry import Analysis, Option, first_paragraph, register_analysis
    from maskgen.data.phantom import VARIANTS
    from maskgen.extractors import extractor_name

    register_analysis(Analysis(
        name="stability", function=stability_report, runs=None, model_options=False, device_default="cpu",
        help="linear CKA of extractor features (and of the raw image) between domains and under gamma",
        description=first_paragraph(__doc__) + " Without --pairs, subjects are rendered by the phantom generator.",
        out_help="report folder (cka_domains.csv, cka_gamma.csv, summary.json, PNGs)", call_kwargs=(("verbose", True),),
        report=lambda result, _out: f"{format_table(result['summary'])}\n\n{result['summary']['wall_time_s']:.1f} s",
        options=(
            Option("--extractors", "extractors to score besides the raw image; a+b scores their concatenated features "
                   "(default mind)", ("mind",), extractor_name, "+", metavar="NAME[+NAME...]"),
            Option("--extractor-weights", "weights file per extractor, e.g. anatomix=anatomix.pth", (), nargs="+",
                   metavar="NAME=PATH", keyword="extractor_kwargs", convert=parse_weights),
            Option("--pairs", "CSV with columns subject,domain,image (co-registered images; default: phantom subjects)"),
            Option("--subjects", "phantom subjects (default 3)", 3, int),
            Option("--shape", "phantom volume shape (default 64 64 64)", (64, 64, 64), int, 3, metavar=("D", "H", "W")),
            Option("--spacing", "phantom voxel spacing in mm (default 1.5)", (1.5, 1.5, 1.5), float, 3,
                   metavar=("X", "Y", "Z")),
            Option("--variant", "phantom variant (default edges; texture: issue 17's harder test, as maskgen phantom "
                   "--variant)", "edges", choices=VARIANTS),
            Option("--domains", "domains to compare (phantom default: T1w T2w PDw FLAIR CT; with --pairs: all listed)",
                   nargs="+"),
            Option("--reference", "domain compared with all others and perturbed by gamma (default T1w / first in "
                   "--pairs)"),
            Option("--gammas", f"gamma perturbations x -> x**gamma (default {' '.join(map(str, DEFAULT_GAMMAS))})",
                   DEFAULT_GAMMAS, float, "+"),
            Option("--voxels", f"voxels sampled per subject inside the mask (default {DEFAULT_N_VOXELS})",
                   DEFAULT_N_VOXELS, int, keyword="n_voxels"),
            Option("--mask", "where to sample voxels: otsu body mask of the reference image (default), nonzero, all",
                   "otsu", choices=MASKS),
            Option("--seed", "seed of the voxel sample and of the phantom subjects (default 0)", 0, int),
        ),
    ))


_stability_declaration()
