"""``maskgen export``: the exported model reproduces ``maskgen predict``'s probabilities."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_dataset
from monai.inferers import sliding_window_inference

from maskgen.cli import main
from maskgen.data.preprocess import load_case
from maskgen.evaluation.testing import train_and_test
from maskgen.inference.predict import Predictor
from maskgen.runtime.config import TrainConfig


@pytest.fixture(scope="module", params=["none", "instance"], ids=lambda v: f"image_norm={v}")
def run(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("export")
    ds = write_dataset(root / "ds")
    cfg = TrainConfig(dataset=str(ds), out=str(root / "run"), method="maskgen", steps=2, batch_size=2,
                      patch_size=[16, 16, 16], val_every=2, base_width=2, n_poolings=2, convs_per_level=1,
                      num_workers=0, device="cpu", spacing=[2.0, 2.0, 2.0],
                      hparams={"image_norm": request.param})
    train_and_test(cfg, test=False, progress=False)
    return ds, root / "run"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_model_reproduces_predict(run, tmp_path, fmt):
    ds, run_dir = run
    out = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
    assert main(["export", str(run_dir), "--out", str(out), "--format", fmt]) == 0
    rec = json.loads(out.with_name(out.name + ".json").read_text())
    assert rec["class_values"] == [0, 1, 2] and rec["spacing_mm"] == [2.0, 2.0, 2.0] and rec["window"] == [16] * 3
    assert rec["max_abs_difference_to_run"] is not None and rec["max_abs_difference_to_run"] <= 1e-4

    pred = Predictor(run_dir, device="cpu")
    src = sorted((ds / "imagesTs").iterdir())[0]
    image = load_case(src, None, pred.cfg.spacing, pred.cfg.modality)["image"].as_tensor()  # as the record says
    if fmt == "torchscript":
        model = torch.jit.load(str(out))
    else:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])

        def model(x):
            return torch.as_tensor(sess.run(["logits"], {"image": x.numpy()})[0])

    with torch.no_grad():
        logits = sliding_window_inference(image[None], rec["window"], 2, model,
                                          overlap=rec["sliding_window"]["overlap"], mode="gaussian")
    probs = torch.softmax(torch.as_tensor(logits), 1)[0]
    torch.testing.assert_close(probs, pred.window_probs(image), atol=1e-4, rtol=0)
    assert main(["export", str(run_dir), "--out", str(out), "--format", fmt]) == 2  # never overwritten silently
