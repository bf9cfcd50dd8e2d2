"""Volume file formats: the endings maskgen reads and writes, and writing a mask in its input's format.

NIfTI (``.nii.gz``, ``.nii``) and FreeSurfer MGH (``.mgz``, ``.mgh``) are read by nibabel; MetaImage
(``.mha``, ``.mhd``) and NRRD (``.nrrd``, ``.nhdr``) by SimpleITK, the reader nnU-Net uses, and handed on
as an in-memory NIfTI image with the RAS affine (SimpleITK works in LPS). Training, prediction and
evaluation all take this one list, so whatever the dataset check accepts is read everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

NIBABEL_ENDINGS = (".nii.gz", ".nii", ".mgz", ".mgh")
SIMPLEITK_ENDINGS = (".mha", ".mhd", ".nrrd", ".nhdr")
VOLUME_ENDINGS = NIBABEL_ENDINGS + SIMPLEITK_ENDINGS
#: detached-header formats are written as their single-file twins (MetaImage, NRRD), so every mask is one
#: file that is written to a temporary name and renamed whole
SINGLE_FILE_ENDING = {".mhd": ".mha", ".nhdr": ".nrrd"}
_MGH_DTYPES = (np.uint8, np.int16, np.int32, np.float32)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def plain_tensor(x) -> torch.Tensor:
    """``x`` as a plain torch tensor: a MONAI MetaTensor sends every operator through its metadata
    bookkeeping, which cost the demo's MaskGen step 14 % on CPU (benchmarks/bench_metatensor_step.py)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def volume_ending(name: str | Path) -> str | None:
    """The supported ending of a file name (case-insensitive), or None."""
    lower = Path(name).name.lower()
    return next((e for e in VOLUME_ENDINGS if lower.endswith(e)), None)


def output_ending(name: str | Path) -> str:
    """The ending a mask for input ``name`` is written with: the input's, single-file where it has two."""
    end = volume_ending(name) or ".nii.gz"
    return SINGLE_FILE_ENDING.get(end, end)


def strip_ending(name: str | Path) -> str:
    """``case_0000.nii.gz`` -> ``case_0000``; a name with no supported ending keeps its stem."""
    name = Path(name).name
    end = volume_ending(name)
    return name[: -len(end)] if end else Path(name).stem


def read_with_nibabel(path: str | Path) -> bool:
    return volume_ending(path) in NIBABEL_ENDINGS


def load_volume(path: str | Path):
    """The nibabel image of ``path`` (SimpleITK formats converted, RAS affine); failures name the file."""
    import nibabel as nib

    try:
        if read_with_nibabel(path) or volume_ending(path) is None:
            return nib.load(str(path))
        return _from_simpleitk(path)
    except Exception as e:  # noqa: BLE001 - gzip, zlib, nibabel, SimpleITK and numpy all raise their own types
        raise ValueError(f"{path}: unreadable volume ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from e


def _from_simpleitk(path: str | Path):
    import nibabel as nib
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a 3D single-component image, got {img.GetDimension()}D with "
                         f"{img.GetNumberOfComponentsPerPixel()} components")
    data = np.ascontiguousarray(sitk.GetArrayFromImage(img).transpose(2, 1, 0))  # (z, y, x) -> (x, y, z)
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.GetDirection(), dtype=float).reshape(3, 3) * np.asarray(img.GetSpacing())
    lps[:3, 3] = img.GetOrigin()
    return nib.Nifti1Image(data, _LPS_TO_RAS @ lps)


def save_like(data: np.ndarray, like, path: str | Path, target: str | Path | None = None) -> None:
    """Write ``data`` on ``like``'s grid to ``path`` in the format of ``target``'s ending (default
    ``path``'s): ``path`` may be a temporary name that keeps the target's suffix."""
    import nibabel as nib

    end = volume_ending(target if target is not None else path)
    if end in SIMPLEITK_ENDINGS:
        _to_simpleitk(data, like.affine, path)
    else:
        nib.save(image_like(data, like, target if target is not None else path), str(path))


def _to_simpleitk(data: np.ndarray, affine: np.ndarray, path: str | Path) -> None:
    import SimpleITK as sitk

    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    lps = _LPS_TO_RAS @ np.asarray(affine, dtype=float)
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
    sitk.WriteImage(img, str(path), useCompression=True)


def image_like(data: np.ndarray, like, path: str | Path):
    """A nibabel image of ``data`` on ``like``'s grid, in the nibabel format that ``path``'s ending names."""
    import nibabel as nib

    end = volume_ending(path)
    if end in (".mgz", ".mgh"):
        if data.dtype not in _MGH_DTYPES:  # MGH stores only these types
            data = data.astype(np.int32 if np.issubdtype(data.dtype, np.integer) else np.float32)
        return nib.MGHImage(data, like.affine)
    if end not in (".nii.gz", ".nii"):
        raise ValueError(f"{path}: unsupported file ending (use one of {', '.join(VOLUME_ENDINGS)})")
    header = like.header.copy() if isinstance(like, nib.Nifti1Image) else None
    img = nib.Nifti1Image(data, like.affine, header)
    img.set_data_dtype(data.dtype)
    qcode = int(like.header["qform_code"]) if header is not None else 1
    scode = int(like.header["sform_code"]) if header is not None else 1
    img.set_qform(like.affine, code=qcode or 1)
    img.set_sform(like.affine, code=scode or 1)
    return img
