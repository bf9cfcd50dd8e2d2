"""``dataset.json`` (nnU-Net v2): read it and report every problem at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maskgen.data.cases import IGNORE_LABEL, DatasetError, brief
from maskgen.data.volumes import VOLUME_ENDINGS

_REQUIRED_KEYS = ("channel_names", "labels", "file_ending")


def read_dataset_json(root: str | Path) -> dict:
    """Read and check ``root/dataset.json``; raise :class:`DatasetError` listing all its problems.

    Label values are returned as plain ints. Region-based labels (nnU-Net region mode) are rejected
    because maskgen assumes mutually exclusive integer classes. ``channel_names`` keyed "0".."N-1" gives
    N input channels, one file each (``<case>_0000`` to ``<case>_{N-1:04d}``).
    """
    root = Path(root)
    meta, problems = _read_dataset_json(root)
    if problems:
        raise DatasetError(problems, root)
    return meta


def _read_dataset_json(root: Path) -> tuple[dict, list[str]]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}, [
            f"{path}: missing (an nnU-Net raw dataset needs dataset.json with channel_names, labels and file_ending)"
        ]
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, [f"{path}: invalid JSON ({brief(e)})"]
    if not isinstance(meta, dict):
        return {}, [f"{path}: invalid dataset.json: expected a JSON object, got {type(meta).__name__}"]

    problems: list[str] = []
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        hint = ""
        if "channel_names" in missing and "modality" in meta:
            hint = " (found the nnU-Net v1 key 'modality'; nnU-Net v2 calls it 'channel_names')"
        problems.append(f"{path}: missing key(s) {', '.join(repr(k) for k in missing)}{hint}")

    if "channel_names" in meta:
        problems += _check_channel_names(path, meta["channel_names"])
    if "labels" in meta:
        labels, label_problems = _check_labels(path, meta["labels"])
        problems += label_problems
        meta["labels"] = labels
    if "regions_class_order" in meta:
        problems.append(
            f"{path}: 'regions_class_order' given: region-based labels (nnU-Net region mode) are not supported"
        )
    if "file_ending" in meta:
        fe = meta["file_ending"]
        if not isinstance(fe, str) or not fe.startswith(".") or len(fe) < 2:
            problems.append(f"{path}: file_ending must be a string like '.nii.gz', got {fe!r}")
        elif fe.lower() not in VOLUME_ENDINGS:
            problems.append(
                f"{path}: file_ending {fe!r} is not supported (volumes are read with nibabel: {', '.join(VOLUME_ENDINGS)})"
            )
    return meta, problems


def _check_channel_names(path: Path, channels: Any) -> list[str]:
    if not isinstance(channels, dict) or not channels:
        return [f'{path}: channel_names must be a non-empty object like {{"0": "CT"}}, got {channels!r}']
    expected = [str(i) for i in range(len(channels))]
    if sorted(channels, key=lambda k: (len(str(k)), str(k))) != expected:
        return [f"{path}: channel_names must be keyed {', '.join(map(repr, expected))} (one per file _0000.."
                f"_{len(channels) - 1:04d}), got {list(channels)}"]
    return []


def _check_labels(path: Path, labels: Any) -> tuple[dict[str, int], list[str]]:
    if not isinstance(labels, dict) or not labels:
        return {}, [
            f'{path}: labels must be a non-empty object like {{"background": 0, "organ": 1}}, got {labels!r}'
        ]
    problems: list[str] = []
    out: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            problems.append(
                f"{path}: label {name!r} is region-based (value {value!r}); nnU-Net region mode is not supported, "
                "give every label a single integer value"
            )
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            problems.append(f"{path}: label {name!r} has value {value!r}; label values must be integers")
        elif value < 0:
            problems.append(f"{path}: label {name!r} has negative value {value!r}")
        else:
            out[name] = int(value)
    if out.get("background") != 0 and not any("region-based" in p for p in problems):
        problems.append(f'{path}: labels must contain "background": 0 (got {labels!r})')
    by_value: dict[int, str] = {}
    for name, value in out.items():
        if value in by_value:
            problems.append(f"{path}: labels {by_value[value]!r} and {name!r} share value {value}")
        by_value.setdefault(value, name)
    if IGNORE_LABEL in out and out[IGNORE_LABEL] != max(out.values()):
        problems.append(f"{path}: label {IGNORE_LABEL!r} has value {out[IGNORE_LABEL]}, but nnU-Net's ignore label must "
                        f"have the highest value (here {max(out.values())})")
    return out, problems
