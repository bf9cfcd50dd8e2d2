"""Our own pretrained extractor: procedural pairs, SupCon, the pretraining run, and the file-based extractors."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).parents[1]
if str(REPO) not in sys.path:  # the package is not installed in the venv; run from the checkout
    sys.path.insert(0, str(REPO))

from maskgen.cli import main  # noqa: E402
from maskgen.extractors import EXTRACTORS, build_extractor  # noqa: E402
from maskgen.extractors import pretrained as pretrained_mod  # noqa: E402
from maskgen.extractors.anatomix import build_anatomix  # noqa: E402
from maskgen.extractors.base import instance_normalize  # noqa: E402
from maskgen.extractors.pretrain import (  # noqa: E402
    PretrainConfig,
    Pretrainer,
    lr_factor,
    supcon_layers,
    supcon_loss,
)
from maskgen.extractors.pretrained import load_extractor_checkpoint  # noqa: E402
from maskgen.extractors.synth import (  # noqa: E402
    Rand,
    SynthConfig,
    make_pair,
    random_label_map,
    shared_geometry,
)
from maskgen.io import OutputExistsError  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

TINY = ["--crop", "16", "--base-width", "4", "--depth", "2", "--num-points", "32", "--proj-dim", "16",
        "--val-every", "2", "--checkpoint-every", "2", "--no-progress"]  # fmt: skip


def tiny_config(**kw) -> PretrainConfig:
    base = dict(steps=3, crop=16, base_width=4, depth=2, num_points=32, proj_dim=16, val_every=2,
                checkpoint_every=2, val_pairs=2)  # fmt: skip
    base.update(kw)
    return PretrainConfig(**base)


def _rows(path: Path) -> list[str]:
    return path.read_text().strip().splitlines()[1:]


# ----------------------------------------------------------------------------------- procedural data
def test_pair_is_deterministic_and_views_share_the_label_map():
    cfg = SynthConfig(size=24)
    v, seg = make_pair((7, 0), cfg)
    assert v.shape == (2, 1, 24, 24, 24) and v.dtype == torch.float32
    assert seg.shape == (24, 24, 24) and seg.dtype == torch.int64
    v2, seg2 = make_pair((7, 0), cfg)
    assert torch.equal(v, v2) and torch.equal(seg, seg2)
    v3, seg3 = make_pair((7, 1), cfg)
    assert not torch.equal(seg, seg3)
    assert not torch.allclose(v[0], v[1], atol=1e-2)  # two independent appearances
    assert torch.isfinite(v).all()


def test_label_maps_hold_several_labels():
    for i in range(4):
        seg = random_label_map(Rand((3, i)), SynthConfig(size=24, n_shapes=(8, 16)))
        present = torch.bincount(seg.flatten())
        assert 4 <= int((present > 0).sum()) <= 16 + 3  # shapes + mask inside/outside + envelope


def test_views_are_piecewise_constant_per_label_with_different_intensities():
    """Without corruption or augmentation each view is one Gaussian per label, drawn independently per view."""
    cfg = SynthConfig(size=24, corrupt=False, geometry=False, augment=False)
    v, seg = make_pair((11, 5), cfg)
    labels = [int(k) for k in seg.unique() if int((seg == k).sum()) >= 20]
    assert len(labels) >= 3
    means = torch.tensor([[float(v[i, 0][seg == k].mean()) for k in labels] for i in range(2)])
    within = torch.tensor([[float(v[i, 0][seg == k].std()) for k in labels] for i in range(2)])
    for i in range(2):  # labels separate far better than voxels of one label differ
        assert float(within[i].mean()) < 0.5 * float(means[i].std())
    assert not torch.allclose(means[0], means[1], atol=0.05)
    # the independent draws change the order of the labels' intensities, not only their scale
    assert not torch.equal(means[0].argsort(), means[1].argsort())


def test_shared_geometry_is_identical_for_both_views():
    seg = random_label_map(Rand((0, 0)), SynthConfig(size=20))
    big = int(torch.bincount(seg.flatten()).argmax())
    img = (seg == big).float()[None, None].repeat(2, 1, 1, 1, 1)  # the same indicator image twice
    for i in range(40):  # find a draw with an affine (p 0.5): it adds an out-of-view label
        out, out_seg = shared_geometry(img, seg, Rand((5, i)))
        if int(out_seg.max()) > int(seg.max()):
            break
    assert int(out_seg.max()) == int(seg.max()) + 1
    assert torch.equal(out[0], out[1])  # one transform for both views
    # ... and the same one for the labels (trilinear indicator vs nearest labels: only boundaries differ)
    agree = ((out[0, 0] > 0.5) == (out_seg == big)).float().mean()
    assert agree > 0.95


# ------------------------------------------------------------------------------------------- SupCon
def test_supcon_exact_on_hand_examples():
    t = 0.33
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # each anchor: one positive at cos 1, two negatives at cos 0 -> -log(e^{1/t} / (e^{1/t} + 2))
    expected = math.log(1.0 + 2.0 * math.exp(-1.0 / t))
    assert supcon_loss(z, labels, t).item() == pytest.approx(expected, rel=1e-5)
    assert supcon_loss(5.0 * z, labels, t).item() == pytest.approx(expected, rel=1e-5)  # cosine: scale-free
    # an anchor without positives is left out of the mean
    z3 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert supcon_loss(z3, torch.tensor([0, 0, 1]), t).item() == pytest.approx(
        math.log(1.0 + math.exp(-1.0 / t)), rel=1e-5
    )
    # two positives at cos 1 and cos 0, one negative at cos -1
    z4 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    lab4 = torch.tensor([0, 0, 0, 1])
    lp = torch.log_softmax(torch.tensor([1.0, 0.0, -1.0]) / t, 0)  # anchor 0 vs [1, 2, 3]
    anchor0 = -(lp[0] + lp[1]) / 2
    lp2 = torch.log_softmax(torch.tensor([0.0, 0.0, 0.0]) / t, 0)  # anchor 2 vs [0, 1, 3]
    anchor2 = -(lp2[0] + lp2[1]) / 2
    expected4 = (2 * anchor0 + anchor2) / 3  # anchor 3 has no positive
    assert supcon_loss(z4, lab4, t).item() == pytest.approx(expected4.item(), rel=1e-5)


def test_supcon_lower_for_label_consistent_embeddings():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (128,), generator=g)
    consistent = torch.nn.functional.one_hot(labels, 8).float() + 0.05 * torch.randn(128, 8, generator=g)
    random = torch.randn(128, 8, generator=g)
    lc, lr = supcon_loss(consistent, labels), supcon_loss(random, labels)
    assert lc < lr - 1.0
    z = random.clone().requires_grad_(True)
    supcon_loss(z, labels).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_loss_layers_and_schedule_follow_the_recipe():
    assert supcon_layers(build_anatomix()) == [27, 31, 38, 45, 52, 65]
    assert [lr_factor(s, 100) for s in (0, 19, 20, 59, 80, 99)] == pytest.approx([1, 1, 0.8, 0.6, 0.2, 0.2])


# ---------------------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain-extractor", str(out), "--steps", "3", *TINY]) == 0
    return out


def test_tiny_run_writes_checkpoint_log_plot_and_config(tiny_run):
    for name in ("config.json", "log.csv", "loss_curve.png", "checkpoint_latest.pt", "extractor.pt"):
        assert (tiny_run / name).is_file(), name
    assert len(_rows(tiny_run / "log.csv")) == 3
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["steps_done"] == 3 and cfg["finished"] and cfg["seed"] == 1234567 and cfg["wall_time_s"] > 0
    assert cfg["command"].startswith("maskgen pretrain-extractor ") and "--steps 3" in cfg["command"]
    assert cfg["config"]["base_width"] == 4 and cfg["loss_layers"] == [13, 17, 24, 37]
    assert (tiny_run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the extractor file: weights and architecture only, weights-only loadable
    ck = torch.load(tiny_run / "extractor.pt", weights_only=True)
    assert set(ck) == {"format", "arch", "layer", "state_dict", "meta"}
    assert ck["arch"]["ngf"] == 4 and ck["arch"]["num_downs"] == 2 and ck["meta"]["steps"] == 3
    assert not any(k.startswith("heads") for k in ck["state_dict"])
    # the run changed the weights away from the seeded initialisation
    torch.manual_seed(1234567)
    from maskgen.extractors.anatomix import AnatomixUNet

    init = AnatomixUNet(**ck["arch"]).state_dict()
    assert not torch.equal(init["model.0.weight"], ck["state_dict"]["model.0.weight"])


def test_refuses_to_overwrite_and_resume_needs_a_run(tiny_run, tmp_path, capsys):
    before = (tiny_run / "extractor.pt").read_bytes()
    assert main(["pretrain-extractor", str(tiny_run), "--steps", "3", *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tiny_run / "extractor.pt").read_bytes() == before
    with pytest.raises(OutputExistsError):
        Pretrainer(tiny_run, tiny_config())
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Pretrainer(tmp_path / "empty", tiny_config(), resume=True)
    with pytest.raises(ValueError, match="--base-width"):  # resume keeps the run's architecture
        Pretrainer(tiny_run, tiny_config(base_width=8), resume=True, given=["base_width"])


def test_cli_resume_extends_and_overwrite_restarts(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain-extractor", str(out), "--steps", "2", *TINY]) == 0
    assert main(["pretrain-extractor", str(out), "--steps", "3", "--resume", "--no-progress"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["steps_done"] == 3 and cfg["resumes"] == 1 and len(cfg["argv"]) == 2
    assert [r.split(",")[0] for r in _rows(out / "log.csv")] == ["1", "2", "3"]
    assert torch.load(out / "extractor.pt", weights_only=True)["meta"]["steps"] == 3
    assert main(["pretrain-extractor", str(out), "--steps", "1", "--overwrite", *TINY]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["steps_done"] == 1 and cfg["resumes"] == 0 and len(_rows(out / "log.csv")) == 1


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    cfg = tiny_config(steps=4, checkpoint_every=100)
    ref = Pretrainer(tmp_path / "ref", cfg, progress=False)
    ref.run()

    original = Pretrainer.batch

    def interrupt_at_2(self, step):
        if step == 2:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(Pretrainer, "batch", interrupt_at_2)
    with pytest.raises(KeyboardInterrupt):
        Pretrainer(tmp_path / "cut", tiny_config(steps=4, checkpoint_every=100), progress=False).run()
    assert torch.load(tmp_path / "cut" / "checkpoint_latest.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(Pretrainer, "batch", original)
    Pretrainer(tmp_path / "cut", PretrainConfig(), resume=True, progress=False).run()

    a = torch.load(tmp_path / "ref" / "extractor.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "extractor.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert _rows(tmp_path / "ref" / "log.csv")[-1].split(",")[1] == _rows(tmp_path / "cut" / "log.csv")[-1].split(",")[1]


def test_max_minutes_stops_cleanly_and_resume_finishes_the_same_run(tmp_path, capsys):
    ref = Pretrainer(tmp_path / "ref", tiny_config(steps=3, checkpoint_every=100), progress=False)
    ref.run()
    out = tmp_path / "sliced"
    res = Pretrainer(out, tiny_config(steps=3, checkpoint_every=100), progress=False, max_minutes=1e-9).run()
    assert res["finished"] is False and res["steps"] == 1 and res["total_steps"] == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["finished"] is False and cfg["steps_done"] == 1
    assert torch.load(out / "checkpoint_latest.pt", weights_only=True)["step"] == 1
    assert main(["pretrain-extractor", str(out), "--resume", "--no-progress", "--max-minutes", "1e-9"]) == 0
    assert "stopped at step 2 of 3" in capsys.readouterr().out
    assert main(["pretrain-extractor", str(out), "--resume", "--no-progress"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["finished"] is True and cfg["steps_done"] == 3 and cfg["resumes"] == 2
    a = torch.load(tmp_path / "ref" / "extractor.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "extractor.pt", weights_only=True)["state_dict"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    with pytest.raises(ValueError, match="--max-minutes must be positive"):
        Pretrainer(tmp_path / "bad", tiny_config(steps=3), max_minutes=0)


# ------------------------------------------------------------------------------ maskgen-synth extractor
def test_checkpoint_loads_as_a_frozen_extractor(tiny_run):
    assert {"maskgen-synth", "torchscript"} <= set(EXTRACTORS)
    e = build_extractor("maskgen-synth", weights=str(tiny_run / "extractor.pt"))
    assert (e.out_channels, e.size_multiple, e.min_size) == (16, 4, 8)
    assert e.layer == e.unet.output_index
    assert all(not p.requires_grad for p in e.parameters())
    e.train()
    assert not e.training and not e.unet.training
    x = torch.rand(2, 1, 13, 10, 17)
    f = e(x)
    assert f.shape == (2, 16, 13, 10, 17) and not f.requires_grad
    assert torch.allclose(f.mean(dim=(2, 3, 4)), torch.zeros(2, 16), atol=1e-4)
    # on a valid size: exactly the instance-normalised network output
    y = torch.rand(1, 1, 16, 16, 16)
    unet, _ = load_extractor_checkpoint(tiny_run / "extractor.pt")
    with torch.no_grad():
        ref = unet(y)
    assert torch.allclose(e(y), instance_normalize(ref), atol=1e-4)
    pen = build_extractor("maskgen-synth", weights=str(tiny_run / "extractor.pt"), layer="penultimate")
    assert pen.out_channels == 4  # the first conv of the last decoder block has base-width channels
    assert pen(y).shape == (1, 4, 16, 16, 16)


def test_shipped_checkpoint_is_selected_by_name(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained_mod, "WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match="pretrain-extractor") as err:
        build_extractor("maskgen-synth")
    assert "maskgen-synth.pt" in str(err.value)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "maskgen-synth.pt").write_bytes((tiny_run / "extractor.pt").read_bytes())
    e = build_extractor("maskgen-synth")
    assert e.out_channels == 16 and e.weights.endswith("maskgen-synth.pt")


def test_the_shipped_checkpoint_is_in_the_package_and_records_its_run():
    path = pretrained_mod.shipped_weights("maskgen-synth")
    assert path.is_file(), "maskgen-synth.pt must ship with the package"
    unet, info = load_extractor_checkpoint(path)
    assert info["meta"]["command"].startswith("maskgen pretrain-extractor")
    assert info["meta"]["seed"] == 1234567 and info["meta"]["steps"] == 1200
    e = build_extractor("maskgen-synth")
    x = torch.rand(1, 1, 20, 24, 18)
    f = e(x)
    assert f.shape == (1, 16, 20, 24, 18) and torch.isfinite(f).all()
    assert torch.equal(e(x), f)  # frozen, eval mode: deterministic


def test_maskgen_synth_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_extractor("maskgen-synth", weights=str(tmp_path / "missing.pt"))
    plain = tmp_path / "plain.pt"
    torch.save(build_anatomix().state_dict(), plain)
    with pytest.raises(ValueError, match="--extractor anatomix"):
        build_extractor("maskgen-synth", weights=str(plain))
    junk = tmp_path / "junk.pt"
    junk.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ValueError, match="weights-only"):
        build_extractor("maskgen-synth", weights=str(junk))


# -------------------------------------------------------------------------------- TorchScript extractor
class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class _TinyUNet(nn.Module):
    """Two poolings: sizes must be multiples of 4."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv3d(1, 2, 3, padding=1)
        self.mid = nn.Conv3d(2, 2, 3, padding=1)
        self.dec = nn.Conv3d(4, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.enc(x))
        b = torch.relu(self.mid(nn.functional.max_pool3d(nn.functional.max_pool3d(a, 2), 2)))
        up = nn.functional.interpolate(b, scale_factor=4.0, mode="nearest")
        return self.dec(torch.cat([a, up], 1))


class _Declared(_Conv):
    def __init__(self):
        super().__init__()
        self.size_multiple = 8
        self.min_size = 16


class _Shrinks(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:, 1:, 1:]


def _script(module: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def test_torchscript_module_as_extractor(tmp_path):
    path = _script(_Conv(), tmp_path / "conv.pt")
    e = build_extractor("torchscript", weights=str(path))
    assert (e.out_channels, e.size_multiple) == (3, 1)
    assert all(not p.requires_grad for p in e.parameters())
    x = torch.rand(1, 1, 9, 7, 11)
    f = e(x)
    assert f.shape == (1, 3, 9, 7, 11) and not f.requires_grad
    ref = torch.jit.load(str(path))
    with torch.no_grad():
        assert torch.allclose(f, instance_normalize(ref(x)), atol=1e-4)


def test_torchscript_size_constraints_probed_or_declared(tmp_path):
    e = build_extractor("torchscript", weights=str(_script(_TinyUNet(), tmp_path / "unet.pt")))
    assert (e.out_channels, e.size_multiple, e.min_size) == (5, 4, 4)
    assert e(torch.rand(2, 1, 10, 13, 6)).shape == (2, 5, 10, 13, 6)  # padded to multiples of 4, cropped back
    d = build_extractor("torchscript", weights=str(_script(_Declared(), tmp_path / "declared.pt")))
    assert (d.out_channels, d.size_multiple, d.min_size) == (3, 8, 16)


def test_torchscript_clear_errors(tmp_path, tiny_run):
    with pytest.raises(FileNotFoundError, match="--extractor-weights"):
        build_extractor("torchscript")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_extractor("torchscript", weights=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a module")
    with pytest.raises(ValueError, match="TorchScript"):
        build_extractor("torchscript", weights=str(junk))
    with pytest.raises(ValueError, match="maskgen-synth"):  # our checkpoint is not TorchScript
        build_extractor("torchscript", weights=str(tiny_run / "extractor.pt"))
    with pytest.raises(ValueError, match=r"\(1, C, S, S, S\)"):
        build_extractor("torchscript", weights=str(_script(_Shrinks(), tmp_path / "shrinks.pt")))
    with pytest.raises(ValueError, match="layer"):
        build_extractor("torchscript", weights=str(_script(_Conv(), tmp_path / "c.pt")), layer=3)
