"""Atomic file writes and overwrite guards: nothing already written is ever half-replaced."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: in every temporary file's name, so one a kill left behind is recognised whatever its suffix (.json, .png)
TEMP_MARK = ".tmp-"


def is_atomic_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temporary files (older ones ended in ``.tmp``)."""
    return name.startswith(".") and (TEMP_MARK in name or name.endswith(".tmp"))


def atomic_write(path: str | Path, writer: Callable[[Path], None], suffix: str | None = None) -> Path:
    """Call ``writer(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lives in the same folder so the rename is atomic; the suffix is kept
    (``.nii.gz``, ``.png``) because several writers infer the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}{TEMP_MARK}", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        # mkstemp creates 0600; the finished file gets the mode any new file would get (umask honoured)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    """Flush the file's data to disk before the rename, so a power loss cannot leave it truncated."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p), suffix=".pt.tmp")


def load_tagged_checkpoint(path: str | Path, tag: str, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint written by maskgen, loaded with ``weights_only=True`` (no code runs from the file) and
    checked to carry ``format == tag``; every failure is a ValueError naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure with the file name
        raise ValueError(f"{path}: not a loadable maskgen checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != tag:
        raise ValueError(f"{path}: not a maskgen checkpoint of this kind (missing format tag {tag!r})")
    return ckpt


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class OutputExistsError(FileExistsError):
    """Raised instead of silently overwriting results."""


def ensure_fresh_dir(path: str | Path, overwrite: bool, what: str = "output folder") -> Path:
    """Create ``path``; refuse if it already holds files unless ``overwrite``."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{path}: {what} already exists and is not empty; pass --overwrite to replace its contents "
            "or choose another folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Rows (dicts) as a CSV, atomically; columns default to the first row's keys (``run`` if there are none)."""
    import csv
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns or (list(rows[0]) if rows else ["run"]), lineterminator="\n",
                       extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """A YAML file holding a mapping; every problem is an error naming the file (``what`` names the file's role,
    ``expected`` what the mapping should hold). An empty file is an empty mapping."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: unreadable {what} ({' '.join(str(e).split())[:200]})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a {what} is {expected}")
    return data
