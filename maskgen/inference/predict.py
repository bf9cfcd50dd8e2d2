"""``maskgen predict``: segment new NIfTI files with a trained run, writing masks in each input's geometry.

Each input is preprocessed exactly as in training (RAS orientation, the run's spacing, its intensity
normalisation), segmented by Gaussian-blended sliding windows, and the class probabilities are resampled
back onto the input's own voxel grid (shape, affine, orientation) before the argmax.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm.auto import tqdm

from maskgen.data.cases import channel_index
from maskgen.data.checks import load_image_checked
from maskgen.data.preprocess import classes_to_label, load_case
from maskgen.data.volumes import (
    VOLUME_ENDINGS,
    load_volume,
    output_ending,
    save_like,
    strip_ending,
    volume_ending,
)
from maskgen.device import place_model, resolve_device
from maskgen.inference.input_grid import argmax_on_input_grid, to_input_grid
from maskgen.inference.tta import TTA
from maskgen.io import OutputExistsError, atomic_write, atomic_write_json
from maskgen.runtime.build import build_extractor_from_config, build_method_from_config
from maskgen.runtime.checkpoint import load_checkpoint
from maskgen.runtime.config import TrainConfig
from maskgen.runtime.sliding import DEFAULT_FEATURE_PASS, FEATURE_PASSES, sliding_window_probs

log = logging.getLogger("maskgen")
#: every subset of the three spatial axes: nnU-Net's mirroring at prediction
MIRROR_FLIPS = tuple(tuple(a for a in range(3) if mask >> a & 1) for mask in range(8))


@dataclass(frozen=True)
class CaseFiles:
    """One case of a multi-channel run: a file per channel (None for a channel given as missing)."""

    name: str
    files: tuple[Path | None, ...]

    @property
    def first(self) -> Path:
        """The first channel file present: the geometry and format the mask is written in."""
        return next(f for f in self.files if f is not None)


def case_name(path: Path | CaseFiles) -> str:
    """``case_0000.nii.gz`` -> ``case`` (nnU-Net channel suffix dropped); other names keep their stem."""
    if isinstance(path, CaseFiles):
        return path.name
    name = strip_ending(path)
    return name[:-5] if name.endswith("_0000") else name


def group_channels(paths: Sequence[Path], channels: Sequence[str], missing: Iterable[int] = ()) -> list[CaseFiles]:
    """Files ``<case>_0000`` ... of a multi-channel run, grouped per case; each channel not in ``missing`` must
    be there. Files of a missing channel are left out. Every problem is reported at once, naming the file."""
    n, missing = len(channels), set(missing)
    listed = ", ".join(f"_{i:04d}={c}" for i, c in enumerate(channels))
    by_case: dict[str, dict[int, Path]] = {}
    given_only_missing: dict[str, Path] = {}
    problems = []
    for p in paths:
        m = re.fullmatch(r"(.+)_(\d{4})", strip_ending(p))
        if m is None:
            problems.append(f"{p}: a {n}-channel run reads files named <case>_0000 ... <case>_{n - 1:04d} ({listed})")
        elif int(m.group(2)) >= n:
            problems.append(f"{p}: channel _{m.group(2)}, but the run has {n} channels ({listed})")
        elif int(m.group(2)) not in missing:
            by_case.setdefault(m.group(1), {})[int(m.group(2))] = p
        else:
            given_only_missing.setdefault(m.group(1), p)
    for case, p in sorted(given_only_missing.items()):
        if case not in by_case:  # never dropped silently: the user gave files for this case
            problems.append(f"{p}: case {case!r} has files only of channels named in --missing; nothing to segment")
    if not paths:
        problems.append("no input files")
    for case, files in sorted(by_case.items()):
        for i in range(n):
            if i not in files and i not in missing:
                problems.append(f"{next(iter(files.values()))}: case {case!r} has no file for channel _{i:04d} "
                                f"({channels[i]}); add it, or predict without it with --missing {channels[i]}")
    if problems:
        raise ValueError(f"{len(problems)} problem(s) with the inputs; nothing was written:\n" + "\n".join(problems))
    return [CaseFiles(case, tuple(files.get(i) for i in range(n))) for case, files in sorted(by_case.items())]


def resolve_missing(missing: Iterable[str | int], channels: Sequence[str]) -> list[int]:
    """Channel names or indices (``--missing``) -> indices; at least one channel must stay."""
    out = []
    listed = ", ".join(f"{i}={c}" for i, c in enumerate(channels))
    for m in missing:
        hit = channel_index(m, list(channels))
        if hit is None:
            raise ValueError(f"--missing {m!r}: the run has no such channel (its channels: {listed})")
        out.append(hit)
    if out and len(set(out)) >= len(channels):
        raise ValueError(f"--missing names every channel of the run ({listed}); at least one must be given")
    return sorted(set(out))


def collect_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if volume_ending(q) and not q.name.startswith(".") and q.is_file())
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no {'/'.join(VOLUME_ENDINGS)} files")
            paths += found
        elif p.is_file():
            if not volume_ending(p):
                raise ValueError(f"{p}: not a supported volume file ({', '.join(VOLUME_ENDINGS)} expected)")
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return paths


def check_input(path: Path | CaseFiles) -> str | None:
    """The problem that would stop ``path`` from being segmented, or None: checked for every input before
    any mask is written, so a bad file in the middle never leaves half a prediction run behind (the same
    check as the dataset's, ``maskgen.data.checks``). A case's channel files must share one voxel grid."""
    if not isinstance(path, CaseFiles):
        return load_image_checked(path)[2]
    grid = None
    for f in path.files:
        if f is None:
            continue
        data, affine, problem = load_image_checked(f)
        if problem:
            return f"{f}: {problem}"
        if grid is None:
            grid = (data.shape, affine, f.name)
        elif data.shape != grid[0] or not np.allclose(affine, grid[1], atol=1e-3):
            return f"{f}: not on the voxel grid of {grid[2]} (every channel of a case must share one grid)"
    return None


def output_paths(paths: Sequence[Path | CaseFiles], out_dir: Path, save_probabilities: bool) -> dict[Path, list[Path]]:
    """Input -> the files its prediction writes (mask, probabilities); refuses collisions with any input."""
    targets = {p: [out_dir / f"{case_name(p)}{output_ending(p.first if isinstance(p, CaseFiles) else p)}"]
               for p in paths}
    if save_probabilities:
        for p in paths:
            targets[p].append(out_dir / "probabilities" / f"{case_name(p)}.nii.gz")
    masks = [t[0].name for t in targets.values()]
    dupes = sorted({n for n in masks if masks.count(n) > 1})
    if dupes:
        raise ValueError(f"several inputs would write the same output file: {dupes}")
    inputs = {os.path.realpath(f) for p in paths for f in (p.files if isinstance(p, CaseFiles) else (p,)) if f}
    onto_input = [t for ts in targets.values() for t in ts if os.path.realpath(t) in inputs]
    if onto_input:
        raise ValueError(
            f"{onto_input[0]}: the prediction would replace this input scan ({len(onto_input)} output(s) would); "
            "choose an --output folder other than the input folder"
        )
    return targets


class Predictor:
    """A trained run, ready to segment volumes."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
                 overlap: float | None = None, feature_mask: str | None = None, tta: TTA | None = None,
                 mirror: bool = False, feature_pass: str = DEFAULT_FEATURE_PASS, missing: Sequence[str | int] = ()):
        """``mirror``: average the softmax over the 8 flips of the three axes (nnU-Net's test-time mirroring,
        8x the compute); a test-time augmentation, unlike ``tta`` (adaptation), which changes nothing.
        ``missing``: channels (names or indices) of a multi-channel run predicted without: their image is
        zeros and they give no features, as MaskGen's channel masking trained the network for."""
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        cfg_path = self.run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: not a maskgen run folder (config.yaml missing)")
        self.cfg = TrainConfig.load(cfg_path)
        ckpt_path = self.run_dir / f"checkpoint_{checkpoint}.pt"
        self.device = resolve_device(device)
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        self.step = int(ckpt["step"])
        # one extractor, shared with the method (finetune_* copy its network in attach_extractor)
        self.extractor = build_extractor_from_config(self.cfg)
        self.method = build_method_from_config(self.cfg, self.extractor)
        self.method.load_state_dict(ckpt["model"])
        place_model(self.method, self.device).eval()
        if self.extractor is not None:
            self.extractor.to(self.device)
        #: the run's input channels, and those predicted without (``--missing``)
        self.channels = self.cfg.channel_names()
        self.missing = resolve_missing(missing, self.channels)
        if hasattr(self.extractor, "absent"):
            self.extractor.absent = frozenset(self.missing)
        self.overlap = self.cfg.val_overlap if overlap is None else overlap
        self.feature_mask = feature_mask
        self.mirror = bool(mirror)
        if feature_pass not in FEATURE_PASSES:
            raise ValueError(f"feature pass must be one of {FEATURE_PASSES}, got {feature_pass!r}")
        #: stable features per sliding window or once per volume (``maskgen.runtime.sliding.FEATURE_PASSES``)
        self.feature_pass = feature_pass
        #: optional change to each preprocessed image before it is segmented (``maskgen analyze robustness``)
        self.perturb = None
        #: how the volume's probabilities are stored (float16 on the lean path: ``predict_file``)
        self.probabilities_dtype = torch.float32
        #: test-time adaptation; the default is plain sliding-window inference (``maskgen.inference.tta``)
        self.tta = tta if tta is not None else TTA()
        self.tta.setup(self)

    def window_probs(self, image: torch.Tensor) -> torch.Tensor:
        """Sliding-window softmax probabilities (C, D, H, W) for a preprocessed image (1, D, H, W); with
        ``mirror``, the mean over every flip of the spatial axes, each flipped back."""
        flips = MIRROR_FLIPS if self.mirror else ((),)
        total = None
        for axes in flips:
            x = torch.flip(image, [a + 1 for a in axes]) if axes else image
            p = sliding_window_probs(
                self.method, self.extractor, x, self.cfg.patch_size, self.overlap, self.device,
                self.cfg.amp, feature_mask=self.feature_mask, feature_pass=self.feature_pass,
                out_dtype=self.probabilities_dtype,
            )
            p = torch.flip(p, [a + 1 for a in axes]) if axes else p
            total = p if total is None else total + p
        return total / len(flips)

    def case_files(self, item: str | Path | Sequence[str | Path | None] | CaseFiles) -> CaseFiles:
        """One case's input as a file per channel; channels in ``missing`` become None."""
        if isinstance(item, CaseFiles):
            files = list(item.files)
        else:
            files = [Path(item)] if isinstance(item, (str, Path)) else [None if f is None else Path(f) for f in item]
        if len(files) != len(self.channels):
            raise ValueError(f"{files[0]}: {len(files)} channel file(s) for a run with {len(self.channels)} channels "
                             f"({', '.join(self.channels)})")
        files = [None if i in self.missing else f for i, f in enumerate(files)]
        first = next(f for f in files if f is not None)
        return item if isinstance(item, CaseFiles) else CaseFiles(case_name(first), tuple(files))

    def probabilities(self, item: str | Path | Sequence[str | Path | None] | CaseFiles, on_input_grid: bool = True
                      ) -> tuple[np.ndarray | torch.Tensor, nib.Nifti1Image]:
        """Class probabilities (C, X, Y, Z) on the input's own voxel grid, and the input image (a file, or one
        file per channel of a multi-channel run); ``on_input_grid`` False leaves them on the preprocessed grid."""
        case = self.case_files(item)
        path = case.first
        original = load_volume(path)
        shape = original.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise ValueError(f"{path}: expected a 3D image, got shape {original.shape}")
        data = load_case(list(case.files), None, self.cfg.spacing, self.cfg.image_modalities())
        image = data["image"]
        if not torch.isfinite(image.as_tensor()).all():
            raise ValueError(f"{path}: image contains NaN or infinite voxels")
        x = image.as_tensor() if self.perturb is None else self.perturb(image.as_tensor())
        probs = self.tta.predict_volume(self, x, name=case.name)
        #: the last volume's preprocessed image and probabilities (its quality check reuses them)
        self.last_preprocessed = (x, probs, image.affine)
        if not on_input_grid:
            return probs, original
        return to_input_grid(probs, image.affine, original), original

    def predict_file(self, path: str | Path | Sequence[str | Path | None] | CaseFiles, with_probabilities: bool = True
                     ) -> tuple[np.ndarray, np.ndarray | None, nib.Nifti1Image]:
        """Mask (label values) on the input's grid, and the probabilities there unless ``with_probabilities``
        is False: then the probabilities on the preprocessed grid are kept as float16 (plain inference; as
        nnU-Net v2 keeps its logits) and resampled one class at a time into a running argmax, so memory holds
        half the probabilities and one class on the input grid rather than all of them in float32 (a
        512 x 512 x 300 CT with 16 classes: 2.5 + 0.3 GB, not 5 + 5 GB); the mask differs only where two
        classes come within float16's rounding (about 5e-4) of each other."""
        if with_probabilities:
            probs, original = self.probabilities(path)
            labels = classes_to_label(probs.argmax(0), self.cfg.channel_values())
            return labels, probs, original
        plain = type(self.tta) is TTA and not self.mirror
        self.probabilities_dtype = torch.float16 if plain else torch.float32
        try:
            probs, original = self.probabilities(path, on_input_grid=False)
        finally:
            self.probabilities_dtype = torch.float32
        classes = argmax_on_input_grid(probs, self.last_preprocessed[2], original)
        self.last_preprocessed = None
        del probs
        return classes_to_label(classes, self.cfg.channel_values()), None, original

    def predict_to_folder(self, inputs: Iterable[str | Path] | str | Path, output: str | Path,
                          overwrite: bool = False, save_probabilities: bool = False, progress: bool = True,
                          qc=None) -> list[Path]:
        """Segment every input into ``output``; every input is checked first, and nothing is written
        (not even the folder) when any input is bad, would be overwritten, or is itself a target.
        ``qc``: a ``maskgen.inference.qc.QualityCheck`` that scores each case from the partial views."""
        paths = collect_inputs(inputs)
        if len(self.channels) > 1:
            paths = group_channels(paths, self.channels, self.missing)
        out_dir = Path(output)
        targets = output_paths(paths, out_dir, save_probabilities)
        if qc is not None:
            for p, extra in qc.targets(paths, out_dir).items():
                targets[p] += extra
        problems = [f"{case_name(p) if isinstance(p, CaseFiles) else p}: {why}" for p in tqdm(paths, desc="check inputs", disable=not progress, leave=False)
                    if (why := check_input(p)) is not None]
        if problems:
            raise ValueError(f"{len(problems)} of {len(paths)} input(s) cannot be segmented; nothing was written:\n"
                             + "\n".join(problems))
        existing = [t for ts in targets.values() for t in ts if t.exists()]
        if existing and not overwrite:
            raise OutputExistsError(
                f"{existing[0]}: prediction already exists ({len(existing)} output file(s) do); "
                "pass --overwrite to replace them or choose another --output"
            )
        created = not out_dir.exists()
        written: list[Path] = []
        try:
            for p in tqdm(paths, desc="predict", disable=not progress):
                labels, probs, original = self.predict_file(p, with_probabilities=save_probabilities or qc is not None)
                written.append(write_mask(labels, original, targets[p][0]))
                if save_probabilities:
                    written.append(write_probabilities(probs, original, targets[p][1]))
                if qc is not None:
                    written += qc.check(self, p, original)
            if qc is not None:
                written.append(qc.write(out_dir))
            report = self.tta.report()
            if report is not None:
                written.append(atomic_write_json(out_dir / "tta.json", report))
        finally:
            if created and out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()  # a run that failed before its first mask leaves no empty folder
        return written


def write_mask(labels: np.ndarray, like, path: Path) -> Path:
    """The mask on ``like``'s grid, in the format of ``path``'s ending (NIfTI or MGH), written atomically."""

    return atomic_write(path, lambda tmp: save_like(labels, like, tmp, target=path))


def write_probabilities(probs: np.ndarray, like: nib.Nifti1Image, path: Path) -> Path:
    """Probabilities as a 4D NIfTI (X, Y, Z, C) on the input's grid."""
    arr = np.moveaxis(probs, 0, -1).astype(np.float32)
    img = nib.Nifti1Image(arr, like.affine)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
