"""``maskgen predict``: segment new NIfTI files with a trained run, writing masks in each input's geometry.

Each input is preprocessed exactly as in training (RAS orientation, the run's spacing, its intensity
normalisation), segmented by Gaussian-blended sliding windows, and the class probabilities are resampled
back onto the input's own voxel grid (shape, affine, orientation) before the argmax.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import SpatialResample
from tqdm.auto import tqdm

from maskgen.data.preprocess import load_case
from maskgen.inference.sliding import place_model, resolve_device, sliding_window_probs
from maskgen.inference.tta import TTA
from maskgen.io import OutputExistsError, atomic_write, atomic_write_json
from maskgen.training.config import TrainConfig
from maskgen.training.trainer import build_extractor_from_config, build_method_from_config, load_checkpoint

log = logging.getLogger("maskgen")
NIFTI_ENDINGS = (".nii.gz", ".nii")


def case_name(path: Path) -> str:
    """``case_0000.nii.gz`` -> ``case`` (nnU-Net channel suffix dropped); other names keep their stem."""
    name = path.name
    for end in NIFTI_ENDINGS:
        if name.endswith(end):
            name = name[: -len(end)]
            break
    if name.endswith("_0000"):
        name = name[:-5]
    return name


def collect_inputs(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.name.endswith(NIFTI_ENDINGS) and not q.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no .nii/.nii.gz files")
            paths += found
        elif p.is_file():
            if not p.name.endswith(NIFTI_ENDINGS):
                raise ValueError(f"{p}: not a NIfTI file (.nii or .nii.gz expected)")
            paths.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return paths


class Predictor:
    """A trained run, ready to segment volumes."""

    def __init__(self, run_dir: str | Path, checkpoint: str = "best", device: str = "auto",
                 overlap: float | None = None, feature_mask: str | None = None, tta: TTA | None = None):
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
        self.overlap = self.cfg.val_overlap if overlap is None else overlap
        self.feature_mask = feature_mask
        #: test-time adaptation; the default is plain sliding-window inference (``maskgen.inference.tta``)
        self.tta = tta if tta is not None else TTA()
        self.tta.setup(self)

    def window_probs(self, image: torch.Tensor) -> torch.Tensor:
        """Plain sliding-window softmax probabilities (C, D, H, W) for a preprocessed image (1, D, H, W)."""
        return sliding_window_probs(
            self.method, self.extractor, image, self.cfg.patch_size, self.overlap, self.device,
            self.cfg.amp, feature_mask=self.feature_mask,
        )

    def probabilities(self, path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
        """Class probabilities (C, X, Y, Z) on the input file's own voxel grid, and the input image."""
        path = Path(path)
        try:
            original = nib.load(str(path))
            shape = original.shape
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: unreadable NIfTI file ({type(e).__name__}: {e})") from e
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise ValueError(f"{path}: expected a 3D image, got shape {original.shape}")
        data = load_case(path, None, self.cfg.spacing, self.cfg.modality or "MR")
        image = data["image"]
        if not torch.isfinite(image.as_tensor()).all():
            raise ValueError(f"{path}: image contains NaN or infinite voxels")
        probs = self.tta.predict_volume(self, image.as_tensor(), name=case_name(path))
        from monai.data import MetaTensor

        probs_mt = MetaTensor(probs, affine=image.affine)
        back = SpatialResample(mode="bilinear", padding_mode="border")(
            probs_mt, dst_affine=torch.as_tensor(original.affine, dtype=torch.float64), spatial_size=tuple(shape)
        )
        back = torch.as_tensor(back).float().clamp_min(0).numpy()
        return back, original

    def predict_file(self, path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Image]:
        probs, original = self.probabilities(path)
        labels = probs.argmax(0).astype(np.uint8 if probs.shape[0] < 256 else np.int16)
        return labels, probs, original

    def predict_to_folder(self, inputs: Iterable[str | Path] | str | Path, output: str | Path,
                          overwrite: bool = False, save_probabilities: bool = False, progress: bool = True) -> list[Path]:
        paths = collect_inputs(inputs)
        out_dir = Path(output)
        out_dir.mkdir(parents=True, exist_ok=True)
        targets = {p: out_dir / f"{case_name(p)}.nii.gz" for p in paths}
        names = [t.name for t in targets.values()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"several inputs would write the same output file: {dupes}")
        existing = [t for t in targets.values() if t.exists()]
        if existing and not overwrite:
            raise OutputExistsError(
                f"{existing[0]}: prediction already exists ({len(existing)} of {len(targets)} outputs do); "
                "pass --overwrite to replace them or choose another --output"
            )
        written = []
        for p in tqdm(paths, desc="predict", disable=not progress):
            labels, probs, original = self.predict_file(p)
            written.append(write_mask(labels, original, targets[p]))
            if save_probabilities:
                written.append(write_probabilities(probs, original, out_dir / "probabilities" / f"{case_name(p)}.nii.gz"))
        report = self.tta.report()
        if report is not None:
            written.append(atomic_write_json(out_dir / "tta.json", report))
        return written


def write_mask(labels: np.ndarray, like: nib.Nifti1Image, path: Path) -> Path:
    header = like.header.copy()
    header.set_data_dtype(labels.dtype)
    img = nib.Nifti1Image(labels, like.affine, header)
    img.set_qform(like.affine, code=int(like.header["qform_code"]) or 1)
    img.set_sform(like.affine, code=int(like.header["sform_code"]) or 1)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def write_probabilities(probs: np.ndarray, like: nib.Nifti1Image, path: Path) -> Path:
    """Probabilities as a 4D NIfTI (X, Y, Z, C) on the input's grid."""
    arr = np.moveaxis(probs, 0, -1).astype(np.float32)
    img = nib.Nifti1Image(arr, like.affine)
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))
