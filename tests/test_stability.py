"""maskgen analyze stability: linear CKA, the report on phantom subjects and on a --pairs CSV, the CLI."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from maskgen.analysis import foreground_mask, linear_cka, stability_report
from maskgen.analysis.stability import RAW_IMAGE, _minmax, _sampled_features
from maskgen.cli import main
from maskgen.data.phantom import phantom_affine, render_subject
from maskgen.extractors import build_extractor

TINY = ["--subjects", "2", "--shape", "32", "32", "32", "--domains", "T1w", "T2w", "--gammas", "0.5", "2",
        "--voxels", "3000"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------- CKA
def test_cka_identical_features_is_one():
    x = np.random.default_rng(0).standard_normal((500, 6))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x[:, 0], x[:, 0]) == pytest.approx(1.0, abs=1e-12)  # 1-D input = one channel


def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((800, 5))
    y = x @ rng.standard_normal((5, 7)) + 0.5 * rng.standard_normal((800, 7))
    q, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    base = linear_cka(x, y)
    assert 0.2 < base < 0.99
    assert linear_cka(x, y @ q) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x * 1e4, y * 3e-3) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x + 100.0, y - 7.0) == pytest.approx(base, abs=1e-10)  # centring removes offsets
    # torch tensors are accepted too
    assert linear_cka(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(base, abs=1e-10)


def test_cka_symmetric_and_near_zero_for_independent_features():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((20_000, 8)), rng.standard_normal((20_000, 3))
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    assert linear_cka(x, y) < 0.01


def test_cka_degenerate_inputs():
    x = np.random.default_rng(3).standard_normal((50, 2))
    assert math.isnan(linear_cka(x, np.ones((50, 3))))
    with pytest.raises(ValueError, match="same number of rows"):
        linear_cka(x, x[:10])


def test_otsu_mask_is_the_body():
    rng = np.random.default_rng(4)
    z = np.indices((24, 24, 24)) - 11.5
    body = (z**2).sum(0) < 9**2
    img = np.where(body, 100.0, 0.0) + rng.rayleigh(5.0, body.shape)
    img[(z**2).sum(0) < 3**2] = 8.0  # a dark "ventricle" inside: filled in
    m = foreground_mask(img)
    assert (m == body).mean() > 0.99
    assert foreground_mask(img, "all").all()


# ------------------------------------------------------------------------------- phantom report
def test_mind_is_more_stable_than_the_raw_image_across_contrast():
    _, imgs = render_subject(np.random.default_rng([0, 0]), (32, 32, 32), domains=("T1w", "T2w"))
    idx = np.flatnonzero(foreground_mask(imgs["T1w"]))
    t1, t2 = _minmax(imgs["T1w"], "T1w"), _minmax(imgs["T2w"], "T2w")
    mind = build_extractor("mind")
    raw_cka = linear_cka(_sampled_features(None, t1, idx, torch.device("cpu")),
                         _sampled_features(None, t2, idx, torch.device("cpu")))  # fmt: skip
    mind_cka = linear_cka(_sampled_features(mind, t1, idx, torch.device("cpu")),
                          _sampled_features(mind, t2, idx, torch.device("cpu")))  # fmt: skip
    assert raw_cka < 0.3 < mind_cka, (raw_cka, mind_cka)


def test_report_api_and_skipped_extractor(capsys):
    rep = stability_report(extractors=["mind", "anatomix"], subjects=1, shape=(32, 32, 32),
                           domains=["T2w"], gammas=[2.0], n_voxels=2000)  # fmt: skip
    assert "skipping extractor 'anatomix'" in capsys.readouterr().err
    s = rep["summary"]
    assert s["extractors"] == [RAW_IMAGE, "mind"] and "anatomix" in s["skipped_extractors"]
    assert s["reference"] == "T1w" and s["domains"] == ["T2w"]  # the reference is added to --domains
    assert {(r["extractor"], r["domain"]) for r in rep["domains"]} == {(RAW_IMAGE, "T2w"), ("mind", "T2w")}
    assert s["cka_domains"]["mind"]["T2w"]["se"] is None  # one subject: no standard error
    with pytest.raises(ValueError, match="no extractor could be built"):
        stability_report(extractors=["anatomix"], subjects=1, shape=(32, 32, 32), domains=["T2w"])


def test_the_texture_variant_is_scored_on_its_own_images():
    kw = dict(extractors=["mind"], subjects=1, shape=(32, 32, 32), domains=["T2w"], gammas=[2.0], n_voxels=2000)
    edges, texture = stability_report(**kw), stability_report(variant="texture", **kw)
    assert edges["summary"]["source"]["variant"] == "edges" and texture["summary"]["source"]["variant"] == "texture"
    cka = [r["cka"] for rep in (edges, texture) for r in rep["domains"] if r["extractor"] == "mind"]
    assert abs(cka[0] - cka[1]) > 1e-3  # other images, other features
    with pytest.raises(ValueError, match="variant"):
        stability_report(variant="stripes", **kw)


def test_a_combination_of_extractors_is_scored_on_its_concatenated_features():
    rep = stability_report(extractors=["mind", "mind+mind-ms"], subjects=1, shape=(32, 32, 32), domains=["T2w"],
                           gammas=[2.0], n_voxels=2000)  # fmt: skip
    assert rep["summary"]["extractors"] == [RAW_IMAGE, "mind", "mind+mind-ms"]
    cka = {r["extractor"]: r["cka"] for r in rep["domains"]}
    assert 0.0 < cka["mind+mind-ms"] <= 1.0 and cka["mind+mind-ms"] != cka["mind"]
    with pytest.raises(ValueError, match="distinct extractors"):
        stability_report(extractors=["mind+mind"], subjects=1, shape=(32, 32, 32), domains=["T2w"])


# ------------------------------------------------------------------------------------------ CLI
def test_cli_writes_report_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "stab"
    assert main(["analyze", "stability", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "mind" in printed and "T2w" in printed
    for f in ("cka_domains.csv", "cka_gamma.csv", "summary.json", "cka_domains.png", "cka_gamma.png"):
        assert (out / f).stat().st_size > 0, f
    rows = list(csv.DictReader(open(out / "cka_domains.csv")))
    assert list(rows[0]) == ["extractor", "reference", "domain", "subject", "cka"]
    assert len(rows) == 2 * 2  # (image, mind) x 2 subjects
    gam = list(csv.DictReader(open(out / "cka_gamma.csv")))
    assert list(gam[0]) == ["extractor", "gamma", "subject", "cka"] and len(gam) == 2 * 2 * 2
    summary = json.loads((out / "summary.json").read_text())
    m, r = summary["cka_domains"]["mind"]["T2w"], summary["cka_domains"][RAW_IMAGE]["T2w"]
    assert m["n"] == 2 and m["se"] is not None and m["mean"] > r["mean"]

    before = (out / "summary.json").read_text()
    assert main(["analyze", "stability", "--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    assert main(["analyze", "stability", "--out", str(out), "--overwrite", "--subjects", "1", "--shape", "32", "32",
                 "32", "--domains", "T2w", "--gammas", "2", "--voxels", "500"]) == 0  # fmt: skip
    assert json.loads((out / "summary.json").read_text())["subjects"] == ["s000"]


def _write(path, arr, aff):
    nib.save(nib.Nifti1Image(np.asarray(arr, np.float32), aff), path)
    return path


def test_pairs_csv_reproduces_phantom_and_rejects_mismatched_shapes(tmp_path, capsys):
    _, imgs = render_subject(np.random.default_rng([0, 0]), (32, 32, 32), domains=("T1w", "T2w"))
    aff = phantom_affine((32, 32, 32), (1.5, 1.5, 1.5))
    lines = ["subject,domain,image"]
    for d, a in imgs.items():
        _write(tmp_path / f"s000_{d}.nii.gz", a, aff)
        lines.append(f"s000,{d},s000_{d}.nii.gz")  # relative to the CSV's folder
    (tmp_path / "pairs.csv").write_text("\n".join(lines) + "\n")
    kw = dict(extractors=["mind"], domains=["T1w", "T2w"], reference="T1w", gammas=[2.0], n_voxels=2000)
    from_csv = stability_report(pairs=tmp_path / "pairs.csv", **kw)
    from_phantom = stability_report(subjects=1, shape=(32, 32, 32), **kw)
    assert [r["cka"] for r in from_csv["domains"]] == pytest.approx([r["cka"] for r in from_phantom["domains"]])

    bad = _write(tmp_path / "s001_T2w.nii.gz", np.zeros((32, 32, 30)), aff)
    _write(tmp_path / "s001_T1w.nii.gz", imgs["T1w"], aff)
    (tmp_path / "bad.csv").write_text("subject,domain,image\ns001,T1w,s001_T1w.nii.gz\ns001,T2w,s001_T2w.nii.gz\n")
    assert main(["analyze", "stability", "--out", str(tmp_path / "o"), "--pairs", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "shape" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
