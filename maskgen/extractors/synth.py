"""Procedural training data for pretraining a stable extractor: random label ensembles, two views each.

This is the anatomix data recipe (``shared/spec/anatomix.md`` section 4) with its one external input, the
TotalSegmentator structure masks used as shape templates, replaced by random shapes, so that pretraining
needs no data at all:

1. **Label ensemble.** ``n ~ U{8..16}`` random shapes (deformed ellipsoids, bent tubes, thin shells and
   clusters of thresholded smooth-noise blobs, each with a random pose and its own smooth warp) are
   painted in turn, later ones over earlier ones. With probability 2/3 a deformed sphere masks the
   ensemble (labels outside -> 0, inside +1) and, with a further 1/2, a thin envelope around the mask
   gets its own label. A smooth random displacement field then warps the whole map (nearest neighbour).
2. **Appearance, two views.** Each view draws its own per-label Gaussian intensities (mean ~ U(25, 255),
   std ~ U(5, 20); background 0 with p 0.25), multiplicative multi-scale "Perlin" noise and the MONAI
   corruption chain of the recipe (bias field, k-space spike, gamma, slight blur, Gibbs ringing, sharpening,
   low resolution), then is quantised to 8 bits and rescaled by its 99.99th percentile, as stored.
3. **Loader augmentation.** One geometric transform (flips p 0.9, random affine p 0.5: scale 0.6-1.4,
   rotation +-45 degrees) is applied to both views and to the label map alike; then each view gets its own
   intensity augmentation (blur, noise, strong bias field, gamma, k-space motion), as with TorchIO.

The transforms are small torch re-implementations of the MONAI/TorchIO ones named in the recipe, so that
a whole pair is a pure function of its seed (``make_pair(seed)``): pretraining is resumable exactly
without saving any generator state. Everything runs on CPU tensors of shape (1, 1, S, S, S).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SynthConfig:
    """What ``make_pair`` draws. Sizes are in voxels of the cubic crop ``size``; shapes live in [-1, 1]^3."""

    size: int = 32
    n_shapes: tuple[int, int] = (8, 16)  # inclusive range of painted shapes
    fg_mask_prob: float = 2 / 3
    envelope_prob: float = 0.5
    deform: float = 0.08  # max smooth displacement of the whole map, in half-widths
    background_zero_prob: float = 0.25
    corrupt: bool = True  # the MONAI-style corruption chain of step 2
    geometry: bool = True  # shared flips / affine
    augment: bool = True  # per-view TorchIO-style intensity augmentation


class Rand:
    """A seeded torch generator with the few draws the generator needs."""

    def __init__(self, seed: int | Sequence[int]):
        state = np.random.SeedSequence(seed).generate_state(2, np.uint32)
        self.g = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)

    def uniform(self, lo: float = 0.0, hi: float = 1.0, shape: Sequence[int] | None = None):
        if shape is None:
            return lo + (hi - lo) * float(torch.rand((), generator=self.g))
        return lo + (hi - lo) * torch.rand(tuple(shape), generator=self.g)

    def normal(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.g)

    def prob(self, p: float) -> bool:
        return float(torch.rand((), generator=self.g)) < p

    def randint(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], both included."""
        return int(torch.randint(lo, hi + 1, (), generator=self.g))

    def choice(self, options: Sequence, probs: Sequence[float]):
        i = int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=self.g))
        return options[i]


# ------------------------------------------------------------------------------------------------ helpers
@lru_cache(maxsize=8)
def _grid(size: int) -> torch.Tensor:
    """(3, S^3) voxel-centre coordinates in [-1, 1] (read-only: shared between calls)."""
    ax = torch.linspace(-1.0, 1.0, size)
    return torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij")).reshape(3, -1)


def smooth_noise(r: Rand, size: int, cells: int, channels: int = 1) -> torch.Tensor:
    """(channels, S, S, S) smooth Gaussian noise, unit std per channel: ``cells``^3 normals, trilinearly upsampled."""
    cells = max(2, int(cells))
    coarse = r.normal((1, channels, cells, cells, cells))
    n = F.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=True)[0]
    n = n - n.mean(dim=(1, 2, 3), keepdim=True)
    return n / n.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def random_rotation(r: Rand) -> torch.Tensor:
    q, rr = torch.linalg.qr(r.normal((3, 3)).double())
    q = q * torch.sign(torch.diagonal(rr))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def gaussian_blur(x: torch.Tensor, sigma: Sequence[float], truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` (1, 1, D, H, W) with per-axis ``sigma`` in voxels, replicate borders."""
    for axis, s in enumerate(sigma):
        s = float(s)
        if s < 1e-3:
            continue
        radius = max(1, int(math.ceil(truncate * s)))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / s) ** 2)
        k = k / k.sum()
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = k.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        mode = "replicate" if radius < x.shape[2 + axis] else "constant"
        x = F.conv3d(F.pad(x, pad, mode=mode), k.view(shape))
    return x


def _poly_field(r: Rand, size: int, degree: int, lo: float, hi: float, legendre: bool) -> torch.Tensor:
    """exp(sum c_ijk B_i(x) B_j(y) B_k(z)) over i + j + k <= degree, c ~ U(lo, hi); B = Legendre or monomials."""
    ax = torch.linspace(-1.0, 1.0, size)
    if legendre:
        basis = [torch.ones_like(ax), ax, 0.5 * (3 * ax**2 - 1), 0.5 * (5 * ax**3 - 3 * ax)]
    else:
        basis = [ax**i for i in range(degree + 1)]
    log_field = torch.zeros(size, size, size)
    for i in range(degree + 1):
        for j in range(degree + 1 - i):
            for k in range(degree + 1 - i - j):
                c = r.uniform(lo, hi)
                log_field += c * basis[i][:, None, None] * basis[j][None, :, None] * basis[k][None, None, :]
    return torch.exp(log_field)[None, None]


def _fft(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fftn(x, dim=(-3, -2, -1)), dim=(-3, -2, -1))


def _ifft(k: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifftn(torch.fft.ifftshift(k, dim=(-3, -2, -1)), dim=(-3, -2, -1)).real


def _kspace_radius(size: int) -> torch.Tensor:
    """Distance of each centred k-space sample from the centre, in units of the half-diagonal."""
    c = (size - 1) / 2
    ax = torch.arange(size, dtype=torch.float32) - c
    d = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    return d / d.max()


# ----------------------------------------------------------------------------------------- label maps
SHAPE_KINDS = ("ellipsoid", "tube", "shell", "blobs")
SHAPE_PROBS = (0.45, 0.2, 0.15, 0.2)


def random_shape(r: Rand, size: int) -> torch.Tensor:
    """Boolean (S, S, S) mask of one random shape (see ``SHAPE_KINDS``)."""
    grid = _grid(size)
    kind = r.choice(SHAPE_KINDS, SHAPE_PROBS)
    centre = r.uniform(-0.85, 0.85, (3,))
    local = random_rotation(r).T @ (grid - centre[:, None])
    # a per-shape smooth warp of its own coordinates: bends tubes, dents ellipsoids
    local = local + r.uniform(0.0, 0.15) * smooth_noise(r, size, r.randint(2, 5), 3).reshape(3, -1)
    if kind == "tube":
        radii = torch.tensor([r.uniform(0.5, 1.5), r.uniform(0.05, 0.15), r.uniform(0.05, 0.15)])
    elif kind == "blobs":
        radii = r.uniform(0.4, 1.0, (3,))
    else:
        radii = r.uniform(0.2, 0.9, (3,))
    q = torch.sqrt(((local / radii[:, None]) ** 2).sum(0))
    level = q - 1.0
    if kind == "blobs":  # a cluster of smooth-noise blobs inside a large ellipsoidal region
        noise = smooth_noise(r, size, r.randint(3, 7)).reshape(-1)
        mask = (level < 0) & (noise > r.uniform(0.4, 1.4))
    else:
        level = level + r.uniform(0.0, 0.3) * smooth_noise(r, size, r.randint(3, 6)).reshape(-1)
        mask = level.abs() < r.uniform(0.12, 0.3) if kind == "shell" else level < 0
    return mask.reshape(size, size, size)


def warp_labels(seg: torch.Tensor, r: Rand, amplitude: float) -> torch.Tensor:
    """Nearest-neighbour warp of a (S, S, S) label map by a smooth displacement of max ~``amplitude``."""
    size = seg.shape[0]
    if amplitude <= 0:
        return seg
    disp = r.uniform(0.0, amplitude) * smooth_noise(r, size, r.randint(3, 5), 3) / 2.5
    ax = torch.linspace(-1.0, 1.0, size)
    base = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"))  # (3, D, H, W) in (d, h, w) order
    coords = (base + disp).flip(0).permute(1, 2, 3, 0)[None]  # grid_sample wants (x=w, y=h, z=d)
    out = F.grid_sample(seg[None, None].float(), coords, mode="nearest", padding_mode="border", align_corners=True)
    return out[0, 0].round().long()


def random_label_map(r: Rand, cfg: SynthConfig = SynthConfig()) -> torch.Tensor:
    """(S, S, S) int64 label map of a random ensemble: labels 0..L-1 (some may be fully painted over)."""
    size = cfg.size
    seg = torch.zeros(size, size, size, dtype=torch.long)
    for k in range(1, r.randint(*cfg.n_shapes) + 1):
        seg[random_shape(r, size)] = k
    if r.prob(cfg.fg_mask_prob):  # a deformed sphere: outside -> 0, inside +1 (spec: radius 48-72 of 128)
        grid = _grid(size)
        centre = r.uniform(-0.5, 0.5, (3,))
        radius = r.uniform(0.75, 1.125)
        dist = torch.sqrt(((grid - centre[:, None]) ** 2).sum(0)).reshape(size, size, size)
        dist = dist + r.uniform(0.02, 0.08) * smooth_noise(r, size, r.randint(3, 6))[0]
        level = dist - radius
        inside = level < 0
        seg = torch.where(inside, seg + 1, torch.zeros_like(seg))
        if r.prob(cfg.envelope_prob):  # dilation AND NOT erosion by a ball of 2-4 voxels
            half_width = r.randint(2, 4) * 2.0 / (size - 1)
            seg[level.abs() < half_width] = int(seg.max()) + 1
    return warp_labels(seg, r, cfg.deform)


# ------------------------------------------------------------------------------------------- appearance
def gmm_image(seg: torch.Tensor, r: Rand, background_zero_prob: float = 0.25) -> torch.Tensor:
    """(1, 1, S, S, S) per-label Gaussian intensities, clipped at 0 and min-max scaled to [0, 1]."""
    n_labels = int(seg.max()) + 1
    means = r.uniform(25.0, 255.0, (n_labels,))
    stds = r.uniform(5.0, 20.0, (n_labels,))
    if r.prob(background_zero_prob):
        means[0], stds[0] = 0.0, 0.0
    img = means[seg] + stds[seg] * r.normal(seg.shape)
    return _minmax(img.clamp_min(0.0))[None, None]


def perlin_modulation(x: torch.Tensor, r: Rand, scales: Sequence[int] = (4, 8, 16, 32)) -> torch.Tensor:
    """``x * (1 + 0.02 P)``, P a sum over scales of coarse-grid Gaussian noise (std ~ U(0, 5)) upsampled."""
    size = x.shape[-1]
    p = torch.zeros_like(x)
    for s in scales:
        cells = max(2, math.ceil(size / s) + 1)
        coarse = r.uniform(0.0, 5.0) * r.normal((1, 1, cells, cells, cells))
        p += F.interpolate(coarse, size=x.shape[2:], mode="trilinear", align_corners=True)
    return x * (1.0 + 0.02 * p)


def kspace_spike(x: torch.Tensor, r: Rand) -> torch.Tensor:
    """One k-space sample set to exp(U(0.95, 1.10) * max log-magnitude) (MONAI RandKSpaceSpikeNoise)."""
    k = _fft(x)
    log_max = torch.log(k.abs().max().clamp_min(1e-6))
    idx = tuple(r.randint(0, s - 1) for s in x.shape[2:])
    k[(0, 0, *idx)] = torch.exp(r.uniform(0.95, 1.10) * log_max).to(k.dtype)
    return _ifft(k)


def gibbs_ringing(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Zero k-space beyond (1 - alpha) of the half-diagonal (MONAI GibbsNoise-like truncation)."""
    k = _fft(x)
    keep = _kspace_radius(x.shape[-1]) <= 1.0 - alpha
    return _ifft(k * keep)


def gamma_contrast(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """MONAI AdjustContrast: ((x - min) / range) ** gamma * range + min."""
    lo, rng = x.min(), x.max() - x.min()
    return ((x - lo) / (rng + 1e-7)).clamp_min(0) ** gamma * rng + lo


def gaussian_sharpen(x: torch.Tensor, r: Rand) -> torch.Tensor:
    """MONAI RandGaussianSharpen defaults: b1 = G(x, U(0.5, 1)), b2 = G(b1, 0.5), b1 + U(10, 30) (b1 - b2)."""
    b1 = gaussian_blur(x, [r.uniform(0.5, 1.0)] * 3)
    b2 = gaussian_blur(b1, [0.5] * 3)
    return b1 + r.uniform(10.0, 30.0) * (b1 - b2)


def low_resolution(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Nearest-exact downsampling by ``zoom``, trilinear upsampling back (MONAI SimulateLowResolution)."""
    small = [max(2, round(s * zoom)) for s in x.shape[2:]]
    down = F.interpolate(x, size=small, mode="nearest-exact")
    return F.interpolate(down, size=x.shape[2:], mode="trilinear", align_corners=False)


def corrupt(x: torch.Tensor, r: Rand) -> torch.Tensor:
    """Step-2 chain of the recipe on a [0, 1] image: Perlin, then the MONAI transforms with their p."""
    x = _minmax(perlin_modulation(x, r))
    if r.prob(0.98):
        x = x * _poly_field(r, x.shape[-1], 3, 0.0, 0.075, legendre=True)
    if r.prob(0.2):
        x = kspace_spike(x, r)
    if r.prob(0.5):
        x = gamma_contrast(x, r.uniform(0.5, 2.0))
    if r.prob(0.5):
        x = gaussian_blur(x, r.uniform(0.0, 0.333, (3,)).tolist())
    if r.prob(0.5):
        x = gibbs_ringing(x, r.uniform(0.0, 0.333))
    if r.prob(0.25):
        x = gaussian_sharpen(x, r)
    if r.prob(0.333):
        x = low_resolution(x, r.uniform(0.5, 1.0))
    return _minmax(x.clamp_min(0.0))


def store_and_load(x: torch.Tensor) -> torch.Tensor:
    """uint8 storage (x 255), then the pretraining loader's ``(x - min) / (p99.99 - min)``."""
    x = torch.round(x * 255.0) / 255.0
    lo = x.min()
    hi = torch.quantile(x.reshape(-1)[:: max(1, x.numel() // 1_000_000)], 0.9999)
    return (x - lo) / (hi - lo) if hi > lo else x - lo


def render_view(seg: torch.Tensor, r: Rand, cfg: SynthConfig = SynthConfig()) -> torch.Tensor:
    """One appearance view (1, 1, S, S, S) of the label map ``seg`` with its own random draws."""
    x = gmm_image(seg, r, cfg.background_zero_prob)
    if cfg.corrupt:
        x = corrupt(x, r)
    return store_and_load(x)


# ---------------------------------------------------------------------------------- loader augmentation
def shared_geometry(views: torch.Tensor, seg: torch.Tensor, r: Rand) -> tuple[torch.Tensor, torch.Tensor]:
    """One random flip + affine applied identically to ``views`` (V, 1, S, S, S) and ``seg`` (S, S, S).

    Views are resampled trilinearly, labels by nearest neighbour; voxels that come from outside the field of
    view are 0 in every view and get a label of their own. Flips: p 0.9, then each axis with p 0.5;
    affine: p 0.5, scale ~ U(0.6, 1.4) and rotation ~ U(-45, 45) degrees per axis (TorchIO's defaults).
    """
    if r.prob(0.9):
        axes = [2 + a for a in range(3) if r.prob(0.5)]
        if axes:
            views = views.flip(axes)
            seg = seg.flip([a - 2 for a in axes])
    if not r.prob(0.5):
        return views, seg
    scales = r.uniform(0.6, 1.4, (3,))
    angles = r.uniform(-math.pi / 4, math.pi / 4, (3,)).tolist()
    rot = torch.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = torch.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        rot = m @ rot
    theta = torch.zeros(1, 3, 4)
    theta[0, :, :3] = rot @ torch.diag(1.0 / scales)  # output -> input coordinates
    size = tuple(seg.shape)
    grid = F.affine_grid(theta, [1, 1, *size], align_corners=False)
    out_views = F.grid_sample(views, grid.expand(views.shape[0], *grid.shape[1:]), mode="bilinear",
                              padding_mode="zeros", align_corners=False)
    out_seg = F.grid_sample(seg[None, None].float(), grid, mode="nearest", padding_mode="border", align_corners=False)
    inside = F.grid_sample(torch.ones(1, 1, *size), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out_seg = out_seg[0, 0].round().long()
    outside = inside[0, 0] < 0.5
    if outside.any():
        out_seg[outside] = int(seg.max()) + 1
    return out_views, out_seg


def kspace_motion(x: torch.Tensor, r: Rand, n_moves: int = 2, max_shift: float = 3.0) -> torch.Tensor:
    """TorchIO RandomMotion-like: k-space segments along one axis taken from translated copies."""
    size = x.shape[-1]
    axis = r.randint(0, 2)
    k = _fft(x)
    freqs = torch.fft.fftshift(torch.fft.fftfreq(size))
    cuts = sorted(int(c) for c in r.uniform(0.0, 1.0, (n_moves,)) * size)
    bounds = [0, *cuts, size]
    out = k.clone()
    for seg_i in range(1, len(bounds) - 1):  # segment 0 stays put
        lo, hi = bounds[seg_i], bounds[seg_i + 1]
        shift = r.uniform(-max_shift, max_shift, (3,))
        phase = (
            shift[0] * freqs[:, None, None] + shift[1] * freqs[None, :, None] + shift[2] * freqs[None, None, :]
        )
        ramp = torch.exp(-2j * math.pi * phase)
        sl = [slice(None)] * 5
        sl[2 + axis] = slice(lo, hi)
        out[tuple(sl)] = k[tuple(sl)] * ramp[tuple(sl[2:])]
    return _ifft(out)


def loader_augment(x: torch.Tensor, r: Rand) -> torch.Tensor:
    """Per-view TorchIO-style intensity augmentation (blur, noise, bias field, gamma, motion)."""
    if r.prob(0.33):
        x = gaussian_blur(x, r.uniform(0.0, 2.0, (3,)).tolist())
    if r.prob(0.33):
        x = x + r.uniform(0.0, 0.25) * r.normal(x.shape)
    if r.prob(0.5):
        x = x * _poly_field(r, x.shape[-1], 3, -0.5, 0.5, legendre=False)
    if r.prob(0.5):
        gamma = math.exp(r.uniform(-0.4, 0.4))
        x = torch.sign(x) * x.abs() ** gamma
    if r.prob(0.33):
        x = kspace_motion(x, r)
    return x


# ----------------------------------------------------------------------------------------------- pairs
def make_pair(seed: int | Sequence[int], cfg: SynthConfig = SynthConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views (2, 1, S, S, S) float32 of one random label map, and that label map (S, S, S) int64.

    A pure function of ``seed``: the same seed always gives the same pair.
    """
    r = Rand(seed)
    seg = random_label_map(r, cfg)
    views = torch.cat([render_view(seg, r, cfg) for _ in range(2)])
    if cfg.geometry:
        views, seg = shared_geometry(views, seg, r)
    if cfg.augment:
        views = torch.cat([loader_augment(v[None], r) for v in views])
    return views.float().contiguous(), seg.contiguous()
