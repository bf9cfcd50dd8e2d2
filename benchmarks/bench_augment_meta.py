"""MONAI metadata tracking: cost of one augmented 24^3 sample, per transform (prob 1) and composite (prob 0.33).

    OMP_NUM_THREADS=1 python benchmarks/bench_augment_meta.py          # tracking on (training before 7318c77)
    OMP_NUM_THREADS=1 python benchmarks/bench_augment_meta.py nometa   # tracking off (PatchSampler now)
"""

import sys
import time

import monai
import torch

from maskgen.data.augment import build_augmentation


def main() -> None:
    torch.set_num_threads(1)
    if "nometa" in sys.argv:
        monai.data.set_track_meta(False)
    x = {"image": torch.rand(1, 24, 24, 24), "label": torch.randint(0, 5, (1, 24, 24, 24)).float()}
    for t in build_augmentation(0.33).transforms:
        if hasattr(t, "prob"):
            t.prob = 1.0
        if hasattr(t, "set_random_state"):
            t.set_random_state(0)
        for _ in range(3):
            t(dict(x))
        s = time.perf_counter()
        for _ in range(20):
            t(dict(x))
        print(f"{type(t).__name__:30s} {(time.perf_counter() - s) / 20 * 1000:7.2f} ms (prob 1)")
    aug = build_augmentation(0.33)
    s = time.perf_counter()
    for _ in range(50):
        aug(dict(x))
    print(f"composite p=0.33 {(time.perf_counter() - s) / 50 * 1000:.2f} ms")


if __name__ == "__main__":
    main()
