"""The phantom's geometry: smooth random fields, random rotations, the labelled shapes (ellipsoids, a
tube), their non-overlapping layout in the body and their rasterisation onto the voxel grid. Rendering the
shapes into imaging domains is :mod:`maskgen.data.phantom`'s job."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

# --------------------------------------------------------------------------- smooth random fields


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], cell_mm: float
) -> np.ndarray:
    """Zero-mean, unit-std random field, smooth on the scale ``cell_mm``.

    Gaussian noise on a coarse control grid (spacing ~``cell_mm``, one extra point beyond each edge so
    the borders are not damped) is interpolated with a separable Gaussian kernel: three small matrix
    products, far cheaper than smoothing full-resolution noise or spline-zooming it.
    """
    mats = []
    for n, s in zip(shape, spacing):
        c = max(2, math.ceil(n * s / cell_mm)) + 3
        h = (n - 1) * s / (c - 3) if n > 1 else 1.0  # control spacing in mm
        ctrl = (np.arange(c) - 1) * h  # -h, 0, h, ..., extent + h
        x = np.arange(n) * s
        w = np.exp(-0.5 * ((x[:, None] - ctrl[None, :]) / h) ** 2)
        mats.append((w / w.sum(1, keepdims=True)).astype(np.float32))
    f = rng.standard_normal(tuple(m.shape[1] for m in mats)).astype(np.float32)
    a0, a1, a2 = mats
    f = (a0 @ f.reshape(f.shape[0], -1)).reshape(len(a0), *f.shape[1:])  # (n0, c1, c2)
    f = np.matmul(a1, f) @ a2.T  # (n0, n1, c2) -> (n0, n1, n2)
    f -= f.mean()
    f /= f.std() + 1e-8
    return np.ascontiguousarray(f, np.float32)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3x3 rotation (QR of a Gaussian matrix with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def small_rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """Rotation by a random angle <= ``max_angle`` (rad) about a random axis (Rodrigues)."""
    k = rng.standard_normal(3)
    k /= np.linalg.norm(k)
    a = rng.uniform(-max_angle, max_angle)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * kx @ kx


# --------------------------------------------------------------------------- anatomy


@dataclass
class Ellipsoids:
    """Smooth union of ellipsoids ``|R_i (q - c_i)| / a_i < 1`` (one ellipsoid = a plain ellipsoid)."""

    centres: np.ndarray  # (n, 3) mm
    axes: np.ndarray  # (n, 3) mm
    rots: np.ndarray  # (n, 3, 3)
    k: float = 0.15  # smooth-min softness (normalised radius units)

    @property
    def bound(self) -> tuple[np.ndarray, float]:
        """Centre and radius of a sphere that contains the shape (used for analytic non-overlap)."""
        c = self.centres.mean(0)
        slack = 1.0 + (self.k * math.log(len(self.centres)) if len(self.centres) > 1 else 0.0)
        return c, float(
            max(np.linalg.norm(ci - c) + slack * a.max() for ci, a in zip(self.centres, self.axes))
        )

    def inside(self, q: np.ndarray) -> np.ndarray:
        """Membership of points ``q`` (3, N) in mm."""
        r = []
        for c, a, rot in zip(self.centres, self.axes, self.rots):
            local = rot @ (q - c[:, None])
            r.append(np.sqrt(np.sum((local / a[:, None]) ** 2, axis=0)))
        if len(r) == 1:
            return r[0] < 1.0
        r = np.stack(r)
        rmin = r.min(0)
        smin = rmin - self.k * np.log(np.exp(-(r - rmin) / self.k).sum(0))
        return smin < 1.0


@dataclass
class Tube:
    """Points within ``radius`` of a sampled centreline."""

    points: np.ndarray  # (m, 3) mm
    radius: float

    @property
    def bound(self) -> tuple[np.ndarray, float]:
        c = self.points.mean(0)
        return c, float(np.linalg.norm(self.points - c, axis=1).max() + self.radius)

    def inside(self, q: np.ndarray) -> np.ndarray:
        d, _ = cKDTree(self.points).query(q.T, distance_upper_bound=self.radius)
        return d < self.radius


class Layout:
    """Random body and object placement in reference (undeformed) coordinates, all analytic.

    Objects are kept apart through bounding spheres; because every shape is later evaluated at the
    same warped coordinates ``q = x + d(x)``, disjoint reference shapes stay disjoint after the warp.
    """

    def __init__(self, rng: np.random.Generator, half: np.ndarray, vox: float, scale: float = 1.0):
        self.rng = rng
        self.vox = vox
        L = float(half.min())
        self.L = L
        self.S = scale * L  # object size unit; shrunk on retries so crowded (small) volumes still fit
        self.body_c = rng.normal(0.0, 0.02 * L, 3)
        self.body_a = half * rng.uniform(0.86, 0.93, 3)
        self.body_r = small_rotation(rng, 0.25)
        self.t_fat = max(0.045 * L, 1.0 * vox)
        self.t_csf = max(0.02 * L, 0.5 * vox)
        # Rims vary by +-30 % (see rasterise); objects must clear the thickest rim.
        self.rim = 1.3 * (self.t_fat + self.t_csf)
        self.gap = max(0.01 * L, 1.0 * vox)
        self.placed: list[tuple[np.ndarray, float]] = []

    def body_radius(self, p: np.ndarray) -> np.ndarray:
        """Normalised ellipsoid radius of points ``p`` (..., 3): < 1 inside the body."""
        local = (p - self.body_c) @ self.body_r.T
        return np.sqrt(np.sum((local / self.body_a) ** 2, axis=-1))

    def fits(self, c: np.ndarray, b: float) -> bool:
        """Sphere (c, b) lies in the body interior (inside the rims) and clear of all placed objects."""
        c = np.atleast_2d(c)
        # r is Lipschitz with constant 1/min(a): clearance (1 - r) min(a) bounds the distance to the surface.
        if np.any((1.0 - self.body_radius(c)) * self.body_a.min() < b + self.rim + self.gap):
            return False
        return all(np.all(np.linalg.norm(c - pc, axis=1) >= b + pb + self.gap) for pc, pb in self.placed)

    def random_interior_point(self, b: float) -> np.ndarray:
        """Uniform point in the body's reference ellipsoid shrunk to leave room for a sphere of radius b."""
        u = self.rng.standard_normal(3)
        u *= self.rng.uniform() ** (1 / 3) / np.linalg.norm(u)
        scale = np.maximum(self.body_a - b - self.rim, 0.0)
        return self.body_c + self.body_r.T @ (u * scale)

    def place(self, make, tries: int = 200):
        """Draw shapes from ``make()`` until one fits; register and return it (None if none fits)."""
        for _ in range(tries):
            shape = make()
            c, b = shape.bound
            pts = shape.points if isinstance(shape, Tube) else c
            rad = shape.radius if isinstance(shape, Tube) else b
            if self.fits(pts, rad):
                self.placed.append((np.atleast_2d(pts), rad))
                return shape
        return None

    # -- shape factories (sizes relative to L with voxel floors so tiny volumes still resolve them)

    def organ(self) -> Ellipsoids:
        n = int(self.rng.integers(2, 4))
        axes = self.S * self.rng.uniform([0.3, 0.22, 0.19], [0.36, 0.27, 0.23], (n, 3))
        axes = np.maximum(axes, 2.5 * self.vox)
        dirs = self.rng.standard_normal((n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        offsets = dirs * self.S * self.rng.uniform(0.08, 0.12, (n, 1))
        c = self.random_interior_point(0.45 * self.S)
        return Ellipsoids(c + offsets, axes, np.stack([random_rotation(self.rng) for _ in range(n)]))

    def ellipsoid(self) -> Ellipsoids:
        axes = self.S * self.rng.uniform([0.24, 0.18, 0.16], [0.29, 0.22, 0.19])
        axes = np.maximum(axes, 2.0 * self.vox)
        c = self.random_interior_point(axes.max())
        return Ellipsoids(c[None], axes[None], random_rotation(self.rng)[None])

    def nodule(self) -> Ellipsoids:
        rho = max(self.S * self.rng.uniform(0.13, 0.15), 2.2 * self.vox)
        axes = rho * self.rng.uniform(0.88, 1.12, 3)
        c = self.random_interior_point(axes.max())
        return Ellipsoids(c[None], axes[None], random_rotation(self.rng)[None])

    def vessel(self) -> Tube:
        """Smooth random curve: a chord bent by two random sinusoids perpendicular to it."""
        radius = max(self.S * self.rng.uniform(0.075, 0.09), 1.2 * self.vox)
        length = self.S * self.rng.uniform(0.45, 0.6)
        u = self.rng.standard_normal(3)
        u /= np.linalg.norm(u)
        v1 = np.cross(u, self.rng.standard_normal(3))
        v1 /= np.linalg.norm(v1)
        v2 = np.cross(u, v1)
        mid = self.random_interior_point(0.5 * length)
        m = max(8, int(math.ceil(length / (0.25 * self.vox))))
        t = np.linspace(0.0, 1.0, m)[:, None]
        a1, a2 = self.S * self.rng.uniform(-0.15, 0.15, 2)
        phase = self.rng.uniform(0, 2 * np.pi)
        pts = (
            mid
            + (t - 0.5) * length * u
            + a1 * np.sin(np.pi * t) * v1
            + a2 * np.sin(2 * np.pi * t + phase) * v2
        )
        return Tube(pts, radius)

    def blob(self, scale: tuple[float, float, float]) -> Ellipsoids:
        axes = np.maximum(self.S * np.asarray(scale) * self.rng.uniform(0.8, 1.2, 3), 1.5 * self.vox)
        c = self.random_interior_point(axes.max())
        return Ellipsoids(c[None], axes[None], random_rotation(self.rng)[None])


def expected_voxels(shape: Ellipsoids | Tube, voxel_volume: float) -> float:
    if isinstance(shape, Tube):
        length = np.linalg.norm(np.diff(shape.points, axis=0), axis=1).sum()
        return math.pi * shape.radius**2 * length / voxel_volume
    return 4 / 3 * math.pi * float(np.prod(shape.axes, axis=1).max()) / voxel_volume


def box_around(obj: Ellipsoids | Tube, dmax: float, spacing: np.ndarray, shape) -> tuple[slice, ...]:
    """Index box holding every voxel whose warped coordinate (grid point + displacement <= dmax) can hit ``obj``.

    Evaluating shapes only there keeps rasterisation cheap; the grid is centred on the world origin.
    """
    if isinstance(obj, Tube):
        lo, hi = obj.points.min(0) - obj.radius, obj.points.max(0) + obj.radius
    else:
        c, b = obj.bound
        lo, hi = c - b, c + b
    sl = []
    for i, n in enumerate(shape):
        first = math.floor((lo[i] - dmax) / spacing[i] + (n - 1) / 2)
        last = math.ceil((hi[i] + dmax) / spacing[i] + (n - 1) / 2)
        sl.append(slice(min(max(first, 0), n), min(max(last + 1, 0), n)))
    return tuple(sl)
