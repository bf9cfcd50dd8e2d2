#!/usr/bin/env bash
# Issue 17 part 2 on a GPU machine, in one command of at most 10 minutes: pretrain maskgen-synth at the
# anatomix architecture (width 16, 4 poolings, 16 output channels, ~6M parameters) on larger crops than a
# CPU affords, sized by a timing probe so that the learning-rate schedule completes inside the budget.
#
#   device run:  OUT=$OUT bash benchmarks/gpu_pretrain_extractor.sh
#   here (CPU, a few steps, checks the script itself):  OUT=/tmp/gpu_out SMOKE=1 bash benchmarks/gpu_pretrain_extractor.sh
#
# Needs only torch, numpy, matplotlib and tqdm (all in the GPU image; no install). Writes to $OUT:
# config.json, log.csv, loss_curve.png (the run) and extractor.pt split into parts of 15 MB
# (extractor.pt.part-aa, -ab, ...: what comes back from a device run is limited to 16 MiB a file);
# rejoin with `cat extractor.pt.part-* > extractor.pt`, then use it with
# `--extractor maskgen-synth --extractor-weights extractor.pt`.
set -euo pipefail
: "${OUT:?set OUT to the folder the results go to}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
BUDGET_MIN=${BUDGET_MIN:-6.5}   # minutes of the real run (the probe and start-up come on top)
if [[ "${SMOKE:-0}" == 1 ]]; then
  ARCH=(--crop 32 --base-width 4 --depth 2 --batch-size 1 --num-points 64 --proj-dim 16); PROBE=2; DEVICE=cpu
  BUDGET_MIN=0.05
else
  ARCH=(--crop 96 --base-width 16 --depth 4 --out-channels 16 --batch-size 2 --num-points 1024 --proj-dim 256
        --lr 0.0005); PROBE=20; DEVICE=cuda
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
$PY - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
# 1. timing probe: seconds per step of this architecture on this device
$PY -m maskgen.cli pretrain-extractor "$WORK/probe" --steps "$PROBE" "${ARCH[@]}" --val-every 1000 \
    --checkpoint-every 1000 --device "$DEVICE" --no-progress
SPS=$($PY -c "import json; c = json.load(open('$WORK/probe/config.json')); print(c['seconds_per_step'])")
STEPS=$($PY -c "print(max(10, int($BUDGET_MIN * 60 / ($SPS * 1.1))))")  # 10 % for validation and checkpoints
echo "probe: $SPS s/step -> $STEPS steps in $BUDGET_MIN min"
# 2. the run; --max-minutes stops it cleanly if the probe was optimistic (then it is resumable elsewhere)
$PY -m maskgen.cli pretrain-extractor "$WORK/run" --steps "$STEPS" "${ARCH[@]}" --val-every $((STEPS / 10 + 1)) \
    --checkpoint-every $((STEPS / 4 + 1)) --device "$DEVICE" --max-minutes "$($PY -c "print($BUDGET_MIN * 1.25)")" \
    --no-progress
mkdir -p "$OUT"
cp "$WORK/run/config.json" "$WORK/run/log.csv" "$OUT/"
cp "$WORK/run/loss_curve.png" "$OUT/" 2>/dev/null || true
split -b 15M "$WORK/run/extractor.pt" "$OUT/extractor.pt.part-"
ls -l "$OUT"
