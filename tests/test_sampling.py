"""Training patches are plain tensors, and the same values MONAI gives with its metadata tracking on."""

import torch
from monai.data import get_track_meta, set_track_meta

from maskgen.data.augment import build_augmentation
from maskgen.data.sampling import PatchSampler


def _samples(n: int) -> list[dict]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    vols = [{"image": torch.rand(1, 30, 28, 12, generator=g),
             "label": torch.randint(0, 4, (1, 30, 28, 12), generator=g).to(torch.uint8)} for _ in range(2)]
    it = iter(PatchSampler(vols, (16, 16, 16), build_augmentation(0.5), seed=1))
    return [next(it) for _ in range(n)]


def test_patches_are_plain_tensors_with_the_values_of_metadata_tracking(monkeypatch):
    fast = _samples(30)
    assert all(type(s[k]) is torch.Tensor for s in fast for k in s)
    assert all(s["image"].shape == (1, 16, 16, 16) and s["label"].dtype == torch.uint8 for s in fast)
    assert get_track_meta()  # restored after each augmentation
    import maskgen.data.sampling as sampling

    monkeypatch.setattr(sampling, "set_track_meta", lambda flag: None)  # tracking stays on: the old path
    tracked = _samples(30)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(fast, tracked) for k in a)
    set_track_meta(True)
