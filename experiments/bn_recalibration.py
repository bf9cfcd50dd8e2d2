"""Probe of the variance-shift suspect: re-estimate BatchNorm statistics of a trained run on unmasked,
augmented training patches (50 batches of 4), then test again per domain. Prints mean Dice per domain before
("orig") and after ("recal"). Assumes a phantom-style dataset (splits.csv, MR, 2 mm, patch 32^3).

    .venv/bin/python experiments/bn_recalibration.py RUN_DIR DATASET_DIR aug
"""

import sys
from pathlib import Path

import numpy as np
import torch

from maskgen.data.augment import build_augmentation
from maskgen.data.nnunet import load_dataset
from maskgen.data.preprocess import load_case
from maskgen.data.sampling import PatchSampler
from maskgen.evaluation.testing import score_cases
from maskgen.inference.predict import Predictor

run = Path(sys.argv[1])
ds = Path(sys.argv[2])
aug = sys.argv[3] == 'aug'
spec = load_dataset(ds, splits_file=ds/'splits.csv', progress=False)
test = [c for c in spec.split('test')]
def summ(p, tag):
    res = score_cases(p, test, run / 'bn_recalibration' / tag, spec.labels, compute_hd95=False, save_predictions=False, overwrite=True, progress=False)
    by = {}
    for r in res['rows']:
        by.setdefault(r['domain'], []).append(r['mean_dice'])
    print(tag, {d: round(float(np.mean(v)),3) for d, v in sorted(by.items())}, flush=True)
p = Predictor(run)
summ(p, 'orig')
vols = [load_case(c.image, c.label, (2.,2.,2.), 'MR') for c in spec.split('train')]
samp = PatchSampler(vols, (32,32,32), build_augmentation(0.33) if aug else None, seed=5)
it = iter(samp)
m = p.method
for mod in m.modules():
    if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
        mod.reset_running_stats()
        mod.momentum = None
m.train()
with torch.no_grad():
    for _ in range(50):
        b = [next(it) for _ in range(4)]
        img = torch.stack([x['image'] for x in b])
        f = p.extractor(img) if p.extractor is not None else None
        m(img, f)
m.eval()
summ(p, 'recal')
