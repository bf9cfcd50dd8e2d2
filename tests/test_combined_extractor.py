"""``--extractor mind+maskgen-synth``: several stable sources at once, features concatenated."""

from __future__ import annotations

import pytest
import torch

from maskgen.evaluation.testing import train_and_test
from maskgen.extractors import build_extractor
from maskgen.extractors.combined import split_weights
from maskgen.runtime.config import TrainConfig


def test_combined_features_are_each_members_features_side_by_side():
    x = torch.rand(1, 1, 32, 32, 32)
    both = build_extractor("mind+maskgen-synth")
    mind, synth = build_extractor("mind"), build_extractor("maskgen-synth")
    assert both.out_channels == mind.out_channels + synth.out_channels
    assert both.size_multiple % synth.size_multiple == 0 and both.min_size >= synth.min_size
    f = both(x)
    torch.testing.assert_close(f[:, : mind.out_channels], mind(x))
    torch.testing.assert_close(f[:, mind.out_channels:], synth(x))
    raw = both(x, normalize=False)
    torch.testing.assert_close(raw[:, : mind.out_channels], mind(x, normalize=False))


@pytest.mark.parametrize("name, message", [
    ("mind+mind", "distinct extractors"), ("mind+", "distinct extractors"), ("mind+nope", "unknown extractor 'nope'"),
    ("mind+none", "'none' cannot be combined"),
])
def test_bad_combinations_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        build_extractor(name)


def test_weights_go_to_the_member_that_takes_them():
    assert split_weights(["mind", "maskgen-synth"], "w.pt") == {"maskgen-synth": "w.pt"}
    assert split_weights(["anatomix", "maskgen-synth"], "anatomix=a.pth,maskgen-synth=s.pt") == {
        "anatomix": "a.pth", "maskgen-synth": "s.pt"}
    with pytest.raises(ValueError, match="give NAME=PATH pairs"):
        split_weights(["anatomix", "maskgen-synth"], "a.pth")
    with pytest.raises(ValueError, match="take no weights"):
        split_weights(["mind", "maskgen-synth"], "mind=m.pt")


def test_maskgen_trains_and_predicts_on_two_sources(tmp_path):
    from conftest import write_dataset

    from maskgen.cli import main

    ds = write_dataset(tmp_path / "ds")
    cfg = TrainConfig(dataset=str(ds), out=str(tmp_path / "run"), method="maskgen", extractor="mind+maskgen-synth",
                      steps=2, batch_size=2, patch_size=[16, 16, 16], val_every=2, base_width=2, n_poolings=2,
                      convs_per_level=1, num_workers=0, device="cpu", spacing=[2.0, 2.0, 2.0])
    result = train_and_test(cfg, progress=False)
    assert result["test_summary"] is not None
    saved = TrainConfig.load(tmp_path / "run" / "config.yaml")
    assert saved.extractor == "mind+maskgen-synth" and saved.feature_channels == 12 + 16
    image = next((ds / "imagesTs").glob("*_0000.nii.gz"))
    assert main(["predict", "--run", str(tmp_path / "run"), "--input", str(image), "--output", str(tmp_path / "m")]) == 0
    with pytest.raises(SystemExit) as err:  # argparse names the unknown member
        main(["train", str(ds), "--out", str(tmp_path / "bad"), "--extractor", "mind+nope"])
    assert err.value.code == 2 and not (tmp_path / "bad").exists()
