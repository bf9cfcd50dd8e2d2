"""The dataset contract shared by training, evaluation, the phantom and the analyses: cases, splits, errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")
#: nnU-Net's ignore label: voxels of this label (the highest value) are unannotated; they take no part in
#: the loss, validation or evaluation and are never predicted
IGNORE_LABEL = "ignore"
#: split -> (images folder, labels folder) of the nnU-Net v2 raw layout
SPLIT_FOLDERS = {
    "train": ("imagesTr", "labelsTr"),
    "val": ("imagesVal", "labelsVal"),
    "test": ("imagesTs", "labelsTs"),
}
SPLIT_ALIASES = {
    "train": "train", "tr": "train", "training": "train",
    "val": "val", "validation": "val", "valid": "val",
    "test": "test", "ts": "test", "testing": "test",
}  # fmt: skip
# (images folder, labels folder, split implied by the folder)


class DatasetError(ValueError):
    """A dataset that must not be trained on; ``.problems`` holds every ``"<path>: <problem>"`` found.

    All problems are collected before raising so that a user fixes the dataset in one pass rather
    than one error per run.
    """

    def __init__(self, problems: list[str] | str, root: str | Path | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.root = None if root is None else Path(root)
        # Both in args so the error survives pickling (e.g. raised in a DataLoader worker).
        super().__init__(self.problems, self.root)

    def __str__(self) -> str:
        n = len(self.problems)
        where = f" {self.root}" if self.root is not None else ""
        header = f"invalid nnU-Net dataset{where}: {n} problem{'' if n == 1 else 's'}"
        return "\n".join([header, *self.problems])


@dataclass(frozen=True)
class Case:
    """One case (its channel files) with its optional label and where it belongs."""

    case_id: str
    image: Path  # the first channel's file <case>_0000<file_ending>
    label: Path | None  # None only for test cases without labels
    split: str  # "train" | "val" | "test"
    domain: str  # from the split file; else "source" for train/val and "test" for test cases
    subject: str  # from the split file's optional subject column; else == case_id
    extra_channels: tuple[Path, ...] = ()  # <case>_0001 ... of a multi-channel dataset

    @property
    def images(self) -> tuple[Path, ...]:
        """Every channel's file, in channel order."""
        return (self.image, *self.extra_channels)


@dataclass
class DatasetSpec:
    """A validated dataset: its description from dataset.json plus the resolved list of cases."""

    root: Path
    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    cases: list[Case]

    def split(self, name: str) -> list[Case]:
        """Cases of one split ("train", "val", "test"; the split-file aliases are accepted)."""
        key = SPLIT_ALIASES.get(str(name).strip().lower())
        if key is None:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return [c for c in self.cases if c.split == key]

    @property
    def class_values(self) -> list[int]:
        """The declared label values, ascending: network output channel ``i`` predicts ``class_values[i]``
        (the ignore label has no channel)."""
        return sorted(int(v) for k, v in self.labels.items() if k != IGNORE_LABEL)

    @property
    def ignore_value(self) -> int | None:
        """Value of the ``ignore`` label, or None."""
        return None if IGNORE_LABEL not in self.labels else int(self.labels[IGNORE_LABEL])

    @property
    def n_classes(self) -> int:
        """Number of output channels a segmentation network needs: one per declared label value."""
        return len(self.class_values)

    @property
    def modality(self) -> str:
        """The first channel's modality (see ``modalities``)."""
        return self.modalities[0]

    @property
    def modalities(self) -> list[str]:
        """Per channel: CT (fixed Hounsfield intensity range) or MR (anything else: per-image normalisation)."""
        return [channel_modality(self.channel_names.get(str(i), "")) for i in range(len(self.channel_names))]

    @property
    def channels(self) -> list[str]:
        """The channels' names, in channel order."""
        return [str(self.channel_names[str(i)]) for i in range(len(self.channel_names))]

    @property
    def domains(self) -> dict[str, list[str]]:
        """Split -> sorted unique domains; every split is present (possibly empty) so lookups never fail."""
        return {s: sorted({c.domain for c in self.cases if c.split == s}) for s in SPLITS}


def channel_modality(name: str) -> str:
    """nnU-Net's rule: a channel named CT is normalised as CT; every other name as MR (per image)."""
    return "CT" if str(name).strip().lower() == "ct" else "MR"


def channel_index(name: str | int, channels: list[str] | tuple[str, ...]) -> int | None:
    """The index of the channel a user names by its ``channel_names`` entry (any case) or by its index."""
    text = str(name).strip()
    return next((i for i, c in enumerate(channels) if text == str(i) or text.lower() == str(c).lower()), None)


def default_domain(split: str) -> str:
    """Domain of a case whose split file names none: ``test`` for test cases, ``source`` otherwise."""
    return "test" if split == "test" else "source"


def brief(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
