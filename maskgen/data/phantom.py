"""Procedural multi-domain 3D phantom: the embedded default dataset that demonstrates domain generalisation.

Every subject has one random anatomy (a body with a fat shell, a CSF-like rim and ventricle, a textured
grey/white "parenchyma", unlabelled lesion-mimic blobs and 4 labelled structures of very different size
and shape). The anatomy is rendered in several imaging *domains* from per-tissue (T1, T2, PD, HU)
parameters through MR signal equations or as CT Hounsfield units, so the domains of one subject are
exactly co-registered and share one label map while their tissue contrasts differ, including order flips
(the organ is brighter than its surroundings in T1w and darker in T2w; fluid is bright in T2w and dark in
FLAIR). Per-domain bias field, noise, blur and thick slices widen the gap. An image-only model trained on
one contrast therefore fails on the others although the anatomy, and any domain-stable feature computed
from it, is unchanged: the setting MaskGen is built for.

The dataset is written in nnU-Net v2 raw layout (see :mod:`maskgen.data.nnunet`). ``channel_names`` says
"MR" even though the test set holds a CT domain: the training domain decides the normalisation, so CT
test images are min-max normalised over their own range instead of HU-clipped, which simply makes them
one more unseen contrast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter1d

from maskgen.data.cases import SPLIT_FOLDERS
from maskgen.data.phantom_shapes import (
    Layout,
    box_around,
    expected_voxels,
    smooth_noise,
)
from maskgen.data.splits import write_split_csv
from maskgen.io import atomic_write, atomic_write_json, ensure_fresh_dir

DOMAINS = ("T1w", "T2w", "PDw", "FLAIR", "CT")
LABELS = {"background": 0, "organ": 1, "ellipsoid": 2, "nodule": 3, "vessel": 4}
STRUCTURES = ("organ", "ellipsoid", "nodule", "vessel")  # label k = STRUCTURES[k - 1]

# Tissue -> (T1 ms, T2 ms, PD, CT HU), roughly 1.5 T values. Chosen so that every labelled structure
# differs from the parenchyma in every domain, but with domain-dependent sign (see the module docstring).
# "wm"/"gm" are the two ends of the parenchyma mixture; "mimic" are unlabelled lesion-like distractors
# that look like the organ in T1w only, so a T1w model must learn shape, not brightness.
TISSUES: dict[str, tuple[float, float, float, float]] = {
    "air": (1.0, 1.0, 0.0, -1000.0),
    "fat": (260.0, 80.0, 0.90, -100.0),
    "csf": (4000.0, 2000.0, 1.00, 8.0),
    "wm": (800.0, 75.0, 0.70, 28.0),
    "gm": (1300.0, 100.0, 0.82, 38.0),
    "mimic": (600.0, 130.0, 0.85, 40.0),
    "organ": (450.0, 40.0, 1.00, 70.0),  # T1w+, T2w-, PDw+, FLAIR-, CT+ (enhancing)
    "ellipsoid": (2100.0, 1000.0, 0.95, 12.0),  # T1w-, T2w+, PDw+, FLAIR+, CT- (cyst-like)
    "nodule": (700.0, 30.0, 0.45, 650.0),  # dark in all MR, very bright in CT (calcified)
    "vessel": (350.0, 180.0, 0.95, 320.0),  # bright everywhere (contrast-filled)
}
_T = {name: i for i, name in enumerate(TISSUES)}
_PARENCHYMA = _T["wm"]  # parenchyma voxels carry tissue id "wm" and a gm fraction

# MR sequence parameters (ms). "SE": spin echo; "IR": magnitude inversion recovery.
PROTOCOLS: dict[str, dict[str, float | str]] = {
    "T1w": {"kind": "SE", "TR": 500.0, "TE": 15.0},
    "T2w": {"kind": "SE", "TR": 4000.0, "TE": 100.0},
    "PDw": {"kind": "SE", "TR": 3000.0, "TE": 15.0},
    "FLAIR": {"kind": "IR", "TR": 9000.0, "TE": 100.0, "TI": 2200.0},
    "CT": {"kind": "HU"},
}


@dataclass(frozen=True)
class Degradation:
    """Acquisition imperfections of one domain; they differ so that no two domains share noise statistics."""

    bias: float  # std of log bias field (0: none)
    noise: float  # MR: SNR w.r.t. the mean body signal (Rician); CT: Gaussian noise std in HU
    blur: float  # Gaussian PSF sigma in voxels
    thick: int  # slice thickness in voxels (1: none), simulated by block averaging + linear upsampling
    axis: int  # slice axis for ``thick``


DEGRADATIONS: dict[str, Degradation] = {
    "T1w": Degradation(bias=0.12, noise=40.0, blur=0.5, thick=1, axis=2),
    "T2w": Degradation(bias=0.20, noise=25.0, blur=0.7, thick=1, axis=2),
    "PDw": Degradation(bias=0.15, noise=30.0, blur=0.6, thick=1, axis=2),
    "FLAIR": Degradation(bias=0.25, noise=18.0, blur=0.8, thick=3, axis=2),
    "CT": Degradation(bias=0.0, noise=10.0, blur=0.9, thick=2, axis=0),
}

# split -> (images folder, labels folder) of the nnU-Net v2 raw layout
_FOLDERS = SPLIT_FOLDERS
_MIN_SHAPE = 32  # field of view in finest voxels; below it the small structures no longer fit


# --------------------------------------------------------------------------- anatomy

@dataclass
class _Anatomy:
    """Subject-level quantities shared by all domains: tissue map and per-voxel tissue parameters."""

    tissue: np.ndarray  # uint8 tissue ids (index into TISSUES)
    label: np.ndarray  # uint8 0..4
    t1: np.ndarray  # float32 maps (ms, ms, a.u., HU)
    t2: np.ndarray
    pd: np.ndarray
    hu: np.ndarray
    noise_scale: float = 1.0  # image noise relative to DEGRADATIONS (the texture variant's is higher)


#: ``edges``: structures differ from the parenchyma by their intensity in every domain, so a local edge
#: pattern (which MIND-SSC captures exactly) tells them apart. ``texture``: their mean contrast is cut to
#: TEXTURE_CONTRAST of that and each carries its own texture (fine grain, coarse mottling, stripes; the
#: vessel none: its tubular shape and place are the cue), with partial-volume blur and 1.5x the noise,
#: so telling them apart takes texture and context (issue 17's harder test).
VARIANTS = ("edges", "texture")
TEXTURE_CONTRAST = 0.25
TEXTURE_AMPLITUDE = 0.3


def _make_anatomy(rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray,
                  variant: str = "edges") -> _Anatomy:
    """Random anatomy; redraws (deterministically, from ``rng``) until every label is well represented."""
    half = (np.asarray(shape) - 1) / 2 * spacing
    vox = float(spacing.min())
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(s) for n, s in zip(shape, spacing)]
    for attempt in range(30):
        lay = Layout(rng, half, vox, scale=max(0.6, 0.95**attempt))
        structures = [
            lay.place(lay.organ),
            lay.place(lay.ellipsoid),
            lay.place(lay.nodule),
            lay.place(lay.vessel),
        ]
        if any(s is None for s in structures):
            continue
        # Unlabelled objects only where they do not touch the structures; skipped when nothing fits.
        ventricle = lay.place(partial(lay.blob, (0.13, 0.07, 0.06)), tries=50)
        mimics = [
            lay.place(partial(lay.blob, (0.06, 0.05, 0.045)), tries=50)
            for _ in range(int(rng.integers(2, 5)))
        ]

        # Smooth warp: a coarse and a fine displacement component, a few mm each.
        L = lay.L
        q = np.empty((3, *shape), np.float32)
        dmax = 0.0
        for i in range(3):
            d = 0.03 * L * smooth_noise(rng, shape, spacing, 0.8 * L)
            d += 0.02 * L * smooth_noise(rng, shape, spacing, 0.2 * L)
            dmax = max(dmax, float(np.abs(d).max()))
            q[i] = np.expand_dims(axes[i], [j for j in range(3) if j != i]) + d
        tex = [smooth_noise(rng, shape, spacing, cell * L) for cell in (0.25, 0.12, 0.12)]

        background = [(ventricle, _T["csf"])] + [(m, _T["mimic"]) for m in mimics]
        tissue = _rasterise(lay, q, dmax, spacing, tex[0], background, structures)
        label = np.where(tissue >= _T["organ"], tissue - _T["organ"] + 1, 0).astype(np.uint8)
        counts = np.bincount(label.ravel(), minlength=5)[1:]
        expected = np.array([expected_voxels(s, float(np.prod(spacing))) for s in structures])
        if np.all(counts >= np.maximum(4, 0.3 * expected)):
            anat = _tissue_maps(rng, tissue, label, tex)
            return anat if variant == "edges" else _texture_variant(rng, anat)
    raise RuntimeError(
        f"could not generate a phantom anatomy for shape {shape} and spacing {spacing.tolist()}"
    )


def _rasterise(
    lay: Layout,
    q: np.ndarray,
    dmax: float,
    spacing: np.ndarray,
    tex: np.ndarray,
    background: list,
    structures: list,
) -> np.ndarray:
    """Tissue ids on the voxel grid: body layers, then unlabelled objects, then labelled structures."""
    shape = q.shape[1:]
    r = lay.body_radius(np.moveaxis(q, 0, -1))
    depth = (1.0 - r) * float(lay.body_a.mean())  # ~ mm below the body surface
    wobble = 1.0 + 0.3 * np.clip(tex, -1.0, 1.0)
    t_fat = lay.t_fat * wobble
    tissue = np.full(shape, _T["air"], np.uint8)
    tissue[depth > 0] = _T["fat"]
    tissue[depth >= t_fat] = _T["csf"]
    tissue[depth >= t_fat + lay.t_csf * wobble] = _PARENCHYMA
    objects = [(o, t) for o, t in background if o is not None]
    objects += [(s, _T["organ"] + k) for k, s in enumerate(structures)]
    for obj, tid in objects:
        sl = box_around(obj, dmax, spacing, shape)
        sub = q[(slice(None), *sl)]
        mask = obj.inside(sub.reshape(3, -1)).reshape(sub.shape[1:])
        tissue[sl][mask] = tid
    return tissue


def _tissue_maps(
    rng: np.random.Generator, tissue: np.ndarray, label: np.ndarray, tex: list[np.ndarray]
) -> _Anatomy:
    """Per-voxel T1/T2/PD/HU: subject-jittered tissue values, grey/white mixing and smooth texture."""
    base = np.array(list(TISSUES.values()), np.float64)
    jit = base.copy()
    jit[:, :3] *= 1.0 + rng.normal(0.0, 0.03, (len(base), 3))
    jit[:, 3] += rng.normal(0.0, 1.0, len(base)) * (0.03 * np.abs(base[:, 3]) + 2.0)
    jit[_T["air"]] = base[_T["air"]]
    table = jit.astype(np.float32)
    maps = table[tissue]  # (*shape, 4)
    par = tissue == _PARENCHYMA
    w = 1.0 / (1.0 + np.exp(-2.5 * tex[2][par]))
    maps[par] = table[_T["wm"]] * (1.0 - w)[:, None] + table[_T["gm"]] * w[:, None]
    t1 = maps[..., 0] * (1.0 + 0.04 * tex[0])
    t2 = maps[..., 1] * (1.0 + 0.05 * tex[1])
    pd = maps[..., 2] * (1.0 + 0.03 * (tex[0] - tex[1]) / np.sqrt(2))
    hu = maps[..., 3] + np.where(tissue == _T["air"], 0.0, 5.0 * tex[0]).astype(np.float32)
    return _Anatomy(tissue, label, *(np.ascontiguousarray(m, np.float32) for m in (t1, t2, pd, hu)))


def _unit(field: np.ndarray) -> np.ndarray:
    field = field - field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def _texture_variant(rng: np.random.Generator, anat: _Anatomy) -> _Anatomy:
    """The ``texture`` variant of a subject: low mean contrast, one texture per structure, partial volume."""
    shape = anat.tissue.shape
    fine = _unit(gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.6))
    coarse = _unit(gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.5))
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    grid = np.indices(shape, dtype=np.float32)
    stripes = _unit(np.sin(2 * np.pi / 3.5 * np.tensordot(direction.astype(np.float32), grid, axes=1)
                           + 0.5 * coarse))
    textures = {"organ": fine, "ellipsoid": coarse, "nodule": stripes}
    par = anat.tissue == _PARENCHYMA
    maps = {}
    for name in ("t1", "t2", "pd", "hu"):
        m = getattr(anat, name).copy()
        ref = float(np.median(m[par]))
        for structure in STRUCTURES:
            inside = anat.tissue == _T[structure]
            m[inside] = ref + TEXTURE_CONTRAST * (m[inside] - ref)
            if structure in textures:
                t = textures[structure][inside]
                m[inside] = m[inside] + TEXTURE_AMPLITUDE * t * (40.0 if name == "hu" else abs(ref))
        if name != "hu":
            m = np.maximum(m, 1e-3 if name == "pd" else 1.0)
        maps[name] = gaussian_filter(m, 0.8, mode="nearest").astype(np.float32)  # partial volume
    air = anat.tissue == _T["air"]
    maps["pd"][air] = 0.0
    return _Anatomy(anat.tissue, anat.label, maps["t1"], maps["t2"], maps["pd"], maps["hu"], noise_scale=1.5)


# --------------------------------------------------------------------------- rendering


def _signal(anat: _Anatomy, domain: str) -> np.ndarray:
    """Noise-free image of one domain: MR signal equation (arbitrary units) or HU."""
    p = PROTOCOLS[domain]
    if p["kind"] == "HU":
        return anat.hu.copy()
    tr, te = float(p["TR"]), float(p["TE"])
    t2 = np.exp(-te / anat.t2)
    if p["kind"] == "SE":
        return anat.pd * (1.0 - np.exp(-tr / anat.t1)) * t2
    ti = float(p["TI"])
    return anat.pd * np.abs(1.0 - 2.0 * np.exp(-ti / anat.t1) + np.exp(-tr / anat.t1)) * t2


def _thick_slices(img: np.ndarray, axis: int, f: int) -> np.ndarray:
    """Average blocks of ``f`` slices (slice profile), keep one per block, interpolate linearly back."""
    n = img.shape[axis]
    if f <= 1 or n < 2 * f:
        return img
    centres = np.arange(f // 2, n, f)
    sub = np.take(uniform_filter1d(img, f, axis=axis, mode="nearest"), centres, axis=axis)
    pos = np.clip(np.arange(n), centres[0], centres[-1])
    j = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, len(centres) - 2)
    w = ((pos - centres[j]) / (centres[j + 1] - centres[j])).astype(img.dtype)
    w = np.expand_dims(w, [k for k in range(img.ndim) if k != axis])
    return np.take(sub, j, axis=axis) * (1 - w) + np.take(sub, j + 1, axis=axis) * w


def _render(anat: _Anatomy, domain: str, rng: np.random.Generator, spacing: np.ndarray) -> np.ndarray:
    """Signal -> PSF blur -> thick slices -> bias field and scanner gain -> noise (float32)."""
    deg = DEGRADATIONS[domain]
    img = _signal(anat, domain)
    if deg.blur > 0:
        img = gaussian_filter(img, deg.blur, mode="nearest")
    img = _thick_slices(img, deg.axis, deg.thick)
    shape = img.shape
    if domain == "CT":
        img = img + rng.standard_normal(shape, np.float32) * np.float32(deg.noise * anat.noise_scale)
        return img.astype(np.float32)
    if deg.bias > 0:
        extent = float(np.min(np.asarray(shape) * spacing))
        img = img * np.exp(np.float32(deg.bias) * smooth_noise(rng, shape, spacing, 0.7 * extent))
    img = img * np.float32(rng.uniform(300.0, 3000.0))  # arbitrary scanner units
    sigma = np.float32(img[anat.tissue != _T["air"]].mean() / deg.noise * anat.noise_scale)
    re = img + sigma * rng.standard_normal(shape, np.float32)
    im = sigma * rng.standard_normal(shape, np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)  # Rician magnitude


def render_subject(
    rng: np.random.Generator,
    shape: Sequence[int] = (96, 96, 96),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    domains: Sequence[str] = DOMAINS,
    variant: str = "edges",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One random subject: its label map (uint8, 0..4) and a co-registered float32 image per domain.

    The anatomy is drawn from ``rng`` first; each domain then gets its own generator seeded from
    ``rng`` by its position in :data:`DOMAINS`, so a domain's image does not depend on which other
    domains are requested (train subjects rendered in T1w only get the same T1w as test subjects would).
    """
    shape, spacing_arr = _check_geometry(shape, spacing)
    domains = _check_domains(domains, "domains")
    if variant not in VARIANTS:
        raise ValueError(f"unknown phantom variant {variant!r}; choose from {', '.join(VARIANTS)}")
    anat = _make_anatomy(rng, shape, spacing_arr, variant)
    seeds = rng.integers(0, 2**63 - 1, size=len(DOMAINS))
    images = {
        d: _render(anat, d, np.random.default_rng(seeds[DOMAINS.index(d)]), spacing_arr) for d in domains
    }
    return anat.label, images


# --------------------------------------------------------------------------- dataset writer


def _check_geometry(
    shape: Sequence[int], spacing: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Validate shape and spacing; the field of view must span >= 32 of the finest voxels on every axis."""
    shape = tuple(int(n) for n in shape)
    sp = np.asarray(spacing, float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be 3 positive numbers (mm), got {tuple(spacing)}")
    if len(shape) != 3 or min(shape) < 16 or np.min(np.asarray(shape) * sp) < _MIN_SHAPE * sp.min():
        raise ValueError(
            f"shape {shape} at spacing {tuple(sp.tolist())} is too small to hold the structures: need 3 sizes "
            f">= 16 and a field of view of >= {_MIN_SHAPE} of the finest voxels along every axis"
        )
    return shape, sp  # type: ignore[return-value]


def _check_domains(domains: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(domains, str):
        domains = (domains,)
    out = tuple(dict.fromkeys(domains))
    unknown = [d for d in out if d not in DOMAINS]
    if unknown or not out:
        raise ValueError(
            f"{what}: unknown or empty domain list {list(domains)}; choose from {', '.join(DOMAINS)}"
        )
    return out


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine with the given spacing that puts the volume centre at the world origin."""
    sp = np.asarray(spacing, float)
    aff = np.diag([*sp, 1.0])
    aff[:3, 3] = -(np.asarray(shape, float) - 1) / 2 * sp
    return aff


def _save_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    atomic_write(path, lambda tmp: nib.save(img, tmp))


def generate_phantom(
    out_dir: str | Path,
    n_subjects: int | None = None,
    shape: Sequence[int] = (96, 96, 96),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    train_domains: Sequence[str] = ("T1w",),
    test_domains: Sequence[str] = DOMAINS,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    channels: Sequence[str] | None = None,
    variant: str = "edges",
) -> Path:
    """Write the phantom benchmark as an nnU-Net v2 raw dataset in ``out_dir`` and return it.

    ``channels`` (e.g. ``("T1w", "CT")``) writes the multi-channel variant instead: every subject of every
    split rendered in each listed domain, one file per channel (``_0000``, ``_0001``, ...; a CT channel is
    named CT in ``channel_names``, so it is windowed as CT), all in one domain named by the channels joined
    by ``+``. It has no unseen domain: what it tests is prediction with a channel missing.
    ``variant`` (:data:`VARIANTS`): ``texture`` for the harder test in which local edges do not suffice.

    Subjects ``0..n_train-1`` are train, the next ``n_val`` val, the last ``n_test`` test. Train and val
    subjects are rendered in ``train_domains`` (imagesTr / imagesVal), test subjects in every
    ``test_domains`` (imagesTs: in-domain and unseen domains). Counts default to 8 / 2 / 4; when only
    ``n_subjects`` is given it is split in the same proportions, and explicit counts must add up to it.
    Subject k is drawn from ``default_rng([seed, k])``: the same for any number of subjects.

    ``dataset.json`` and ``splits.csv`` are written last, so an interrupted run leaves no dataset that
    looks complete. With ``overwrite`` old ``phantom_s*`` volumes that are not part of the new dataset are
    removed from the image / label folders so the folders and splits.csv always agree.
    """
    shape, spacing_arr = _check_geometry(shape, spacing)
    train_domains = _check_domains(train_domains, "train_domains")
    test_domains = _check_domains(test_domains, "test_domains")
    if channels is not None:
        channels = _check_domains(channels, "channels")
        train_domains = test_domains = channels
    n_train, n_val, n_test = _split_counts(n_subjects, n_train, n_val, n_test)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

    if variant not in VARIANTS:
        raise ValueError(f"unknown phantom variant {variant!r}; choose from {', '.join(VARIANTS)}")
    out = ensure_fresh_dir(out_dir, overwrite, what="phantom dataset folder")
    affine = phantom_affine(shape, spacing_arr)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    rows: list[tuple[str, str, str, str]] = []
    written: set[Path] = set()

    from tqdm.auto import tqdm

    for k, split in enumerate(tqdm(splits, desc="phantom", unit="subject", disable=not progress)):
        domains = test_domains if split == "test" else train_domains
        label, images = render_subject(np.random.default_rng([int(seed), k]), shape, spacing_arr, domains, variant)
        img_dir, lab_dir = (out / f for f in _FOLDERS[split])
        if channels is not None:
            case = f"phantom_s{k:03d}"
            for i, domain in enumerate(channels):
                _save_nifti(img_dir / f"{case}_{i:04d}.nii.gz", images[domain], affine)
                written.add(img_dir / f"{case}_{i:04d}.nii.gz")
            _save_nifti(lab_dir / f"{case}.nii.gz", label, affine)
            written.add(lab_dir / f"{case}.nii.gz")
            rows.append((case, split, "+".join(channels), f"s{k:03d}"))
            continue
        for domain in domains:
            case = f"phantom_s{k:03d}_{domain}"
            for path, arr in (
                (img_dir / f"{case}_0000.nii.gz", images[domain]),
                (lab_dir / f"{case}.nii.gz", label),
            ):
                _save_nifti(path, arr, affine)
                written.add(path)
            rows.append((case, split, domain, f"s{k:03d}"))

    for sub in (f for pair in _FOLDERS.values() for f in pair):
        for p in (out / sub).glob("phantom_s*.nii.gz"):
            if p not in written:
                p.unlink()

    write_split_csv(out / "splits.csv", rows)
    atomic_write_json(
        out / "dataset.json",
        {
            "name": "Phantom",
            "description": (
                "Procedural multi-domain 3D phantom (maskgen.data.phantom): co-registered renderings of random "
                "anatomies in MR contrasts (T1w, T2w, PDw, FLAIR; arbitrary units) and CT (HU). Train on "
                f"{'/'.join(train_domains)}, test on unseen domains. channel_names says MR: CT test images are "
                "min-max normalised like the training contrast."
            ),
            "channel_names": ({"0": "MR"} if channels is None else
                              {str(i): ("CT" if d == "CT" else d) for i, d in enumerate(channels)}),
            "labels": dict(LABELS),
            "numTraining": sum(1 for r in rows if r[1] == "train"),
            "file_ending": ".nii.gz",
            "phantom": {
                "version": 1,
                "seed": int(seed),
                "shape": list(shape),
                "spacing": [float(s) for s in spacing_arr],
                "train_domains": list(train_domains),
                "test_domains": list(test_domains),
                "channels": None if channels is None else list(channels),
                "variant": variant,
                "subjects": {
                    s: [f"s{k:03d}" for k, sk in enumerate(splits) if sk == s]
                    for s in ("train", "val", "test")
                },
                "protocols": {d: PROTOCOLS[d] for d in DOMAINS},
                "degradations": {d: vars(DEGRADATIONS[d]).copy() for d in DOMAINS},
                "tissues": {name: dict(zip(("T1", "T2", "PD", "HU"), v)) for name, v in TISSUES.items()},
            },
        },
    )
    return out


def _split_counts(n_subjects, n_train, n_val, n_test) -> tuple[int, int, int]:
    """Resolve train/val/test subject counts (defaults 8/2/4, or that ratio of ``n_subjects``)."""
    given = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    for name, v in [("n_subjects", n_subjects), *given.items()]:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if n_subjects is None:
        n_train, n_val, n_test = (
            8 if n_train is None else n_train,
            2 if n_val is None else n_val,
            4 if n_test is None else n_test,
        )
    else:
        if n_test is None:
            n_test = max(1, round(n_subjects * 4 / 14)) if n_subjects >= 2 else 0
        if n_val is None:
            n_val = max(1, round(n_subjects * 2 / 14)) if n_subjects >= 3 else 0
        if n_train is None:
            n_train = n_subjects - n_val - n_test
        if n_train + n_val + n_test != n_subjects:
            raise ValueError(
                f"n_train + n_val + n_test = {n_train + n_val + n_test} != n_subjects = {n_subjects}"
            )
    if n_train < 1:
        raise ValueError(f"need at least one train subject, got n_train={n_train}")
    return int(n_train), int(n_val), int(n_test)
