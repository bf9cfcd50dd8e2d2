"""Where ``maskgen analyze stability`` gets its subjects: phantom subjects, a pairs CSV or in-memory arrays.

Each subject is a set of co-registered images of one anatomy, one per domain, loaded only when scored.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Subject:
    name: str
    domains: tuple[str, ...]
    load: Callable[[], dict[str, np.ndarray]]  # raw images by domain, all of one shape


def phantom_subjects(
    n: int, shape: Sequence[int], spacing: Sequence[float], domains: Sequence[str], seed: int, variant: str = "edges"
) -> list[Subject]:
    from maskgen.data.phantom import _check_domains, _check_geometry, render_subject

    shape, spacing_arr = _check_geometry(shape, spacing)
    domains = _check_domains(domains, "domains")
    if n < 1:
        raise ValueError(f"need at least one subject, got {n}")

    def loader(k: int) -> Callable[[], dict[str, np.ndarray]]:
        # Subject k = generate_phantom's subject k for the same seed, shape and spacing.
        return lambda: render_subject(np.random.default_rng([int(seed), k]), shape, spacing_arr, domains, variant)[1]

    return [Subject(f"s{k:03d}", tuple(domains), loader(k)) for k in range(n)]


def _image_3d(img: Any, path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {tuple(img.shape)}")
    return shape, np.asarray(img.affine, dtype=np.float64)


def read_pairs(csv_path: str | Path, domains: Sequence[str] | None = None) -> list[Subject]:
    """Subjects from a CSV with columns ``subject,domain,image`` (paths relative to the CSV's folder).

    Only headers are read here: every image of one subject must have the same shape and affine (they are
    compared voxel by voxel), and a mismatch is an error that names the file. ``domains`` keeps only those.
    """
    import nibabel as nib

    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: pairs CSV not found")
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        missing = {"subject", "domain", "image"} - set(cols)
        if missing:
            raise ValueError(
                f"{csv_path}: needs columns subject,domain,image; missing {', '.join(sorted(missing))}"
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    keep = None if domains is None else set(domains)
    by_subject: dict[str, dict[str, Path]] = {}
    for i, r in enumerate(rows, start=2):
        if not (r["subject"] and r["domain"] and r["image"]):
            raise ValueError(f"{csv_path}, line {i}: empty subject, domain or image")
        if keep is not None and r["domain"] not in keep:
            continue
        path = Path(r["image"]).expanduser()
        path = path if path.is_absolute() else csv_path.parent / path
        per = by_subject.setdefault(r["subject"], {})
        if r["domain"] in per:
            raise ValueError(f"{csv_path}, line {i}: subject {r['subject']!r} has domain {r['domain']!r} twice")
        per[r["domain"]] = path
    if not by_subject:
        raise ValueError(f"{csv_path}: no images" + ("" if keep is None else f" in domains {sorted(keep)}"))

    subjects = []
    for name, per in by_subject.items():
        first: tuple[Path, tuple[int, ...], np.ndarray] | None = None
        for path in per.values():
            if not path.is_file():
                raise FileNotFoundError(f"{path}: image of subject {name!r} (listed in {csv_path}) not found")
            try:
                shape, aff = _image_3d(nib.load(str(path)), path)
            except ValueError:
                raise
            except Exception as e:  # nibabel raises its own error types for unreadable files
                raise ValueError(f"{path}: cannot read image ({e})") from e
            if first is None:
                first = (path, shape, aff)
            elif shape != first[1]:
                raise ValueError(
                    f"{path}: shape {shape} differs from {first[0]} {first[1]} of subject {name!r}; the images "
                    "of one subject must be co-registered on one voxel grid (same shape and affine)"
                )
            elif not np.allclose(aff, first[2], atol=1e-3, rtol=1e-5):
                raise ValueError(
                    f"{path}: affine differs from that of {first[0]} (subject {name!r}); the images of one "
                    "subject must be co-registered on one voxel grid (same shape and affine)"
                )

        def load(per: dict[str, Path] = per) -> dict[str, np.ndarray]:
            out = {}
            for d, p in per.items():
                arr = np.asarray(nib.load(str(p)).get_fdata(dtype=np.float32))
                out[d] = arr.reshape(arr.shape[:3])
            return out

        subjects.append(Subject(str(name), tuple(per), load))
    return subjects


def array_subjects(data: Mapping[str, Mapping[str, Any]]) -> list[Subject]:
    subjects = []
    for name, per in data.items():
        arrays = {d: np.asarray(a, dtype=np.float32) for d, a in per.items()}
        shapes = {d: a.shape for d, a in arrays.items()}
        if len(set(shapes.values())) > 1 or any(len(s) != 3 for s in shapes.values()):
            raise ValueError(f"subject {name!r}: images must be 3D and of one shape, got {shapes}")
        subjects.append(Subject(str(name), tuple(arrays), lambda arrays=arrays: dict(arrays)))
    if not subjects:
        raise ValueError("no subjects given")
    return subjects
