"""Volume file formats: the endings maskgen reads and writes, and writing a mask in its input's format.

Every reader goes through nibabel, so the formats are nibabel's: NIfTI (``.nii.gz``, ``.nii``) and
FreeSurfer MGH (``.mgz``, ``.mgh``). Training, prediction and evaluation all take this one list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

VOLUME_ENDINGS = (".nii.gz", ".nii", ".mgz", ".mgh")
_MGH_DTYPES = (np.uint8, np.int16, np.int32, np.float32)


def volume_ending(name: str | Path) -> str | None:
    """The supported ending of a file name (case-insensitive), or None."""
    lower = Path(name).name.lower()
    return next((e for e in VOLUME_ENDINGS if lower.endswith(e)), None)


def strip_ending(name: str | Path) -> str:
    """``case_0000.nii.gz`` -> ``case_0000``; a name with no supported ending keeps its stem."""
    name = Path(name).name
    end = volume_ending(name)
    return name[: -len(end)] if end else Path(name).stem


def load_volume(path: str | Path):
    """The nibabel image of ``path``; any failure is a ValueError naming the file."""
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - gzip, zlib, nibabel and numpy all raise their own types
        raise ValueError(f"{path}: unreadable volume ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from e


def image_like(data: np.ndarray, like, path: str | Path):
    """A nibabel image of ``data`` on ``like``'s grid, in the format that ``path``'s ending names."""
    import nibabel as nib

    end = volume_ending(path)
    if end in (".mgz", ".mgh"):
        if data.dtype not in _MGH_DTYPES:  # MGH stores only these types
            data = data.astype(np.int32 if np.issubdtype(data.dtype, np.integer) else np.float32)
        return nib.MGHImage(data, like.affine)
    if end is None:
        raise ValueError(f"{path}: unsupported file ending (use one of {', '.join(VOLUME_ENDINGS)})")
    header = like.header.copy() if isinstance(like, nib.Nifti1Image) else None
    img = nib.Nifti1Image(data, like.affine, header)
    img.set_data_dtype(data.dtype)
    qcode = int(like.header["qform_code"]) if header is not None else 1
    scode = int(like.header["sform_code"]) if header is not None else 1
    img.set_qform(like.affine, code=qcode or 1)
    img.set_sform(like.affine, code=scode or 1)
    return img
