#!/usr/bin/env bash
# Everything maskgen measures on a GPU, as one command of at most 10 minutes (issues 14 and 17): the
# training-step and inference ratios of MaskGen over ERM at the paper's network size, what bf16, compile,
# the sliding-window batch and pinned memory change, then the anatomix-sized maskgen-synth pretraining.
#
# Before the device run, here (the GPU image has torch but not MONAI or nibabel; see the device README):
#   echo /.whl/ >> .git/info/exclude; bash benchmarks/gpu_session.sh --download-wheels
# Then, on the device (carry .whl):
#   OUT=$OUT bash benchmarks/gpu_session.sh
# Here, to check the script itself on a CPU in about a minute (measures nothing):
#   OUT=/tmp/gpu_smoke SMOKE=1 PY=.venv/bin/python bash benchmarks/gpu_session.sh
# Writes to $OUT: bench_step_gpu.json, bench_options_gpu.json, session.log, and pretrain/ (see
# gpu_pretrain_extractor.sh). Each part is bounded by `timeout`, so one slow part cannot eat the others' time.
set -uo pipefail
if [[ "${1:-}" == "--download-wheels" ]]; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl monai==1.6.1 nibabel==5.4.2 && ls -l .whl
  exit
fi
: "${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
PY=${PY:-python3}
if [[ "${SMOKE:-0}" == 1 ]]; then  # here, on a CPU, in a minute: checks the script, measures nothing
  SIZE=(--device cpu --patch 16 --batch 1 --base-width 4 --n-poolings 2 --volume 32); REP=(--repeats 1 --warmup 0)
  SKIP=(--skip compile)
else
  SIZE=(--device cuda --patch 64 --batch 2 --base-width 20 --n-poolings 4 --volume 128); REP=(--repeats 10 --warmup 3)
  SKIP=()
fi
# 1. MaskGen vs ERM, the paper's network (width 20, 4 poolings at 64^3 here; the paper's 5 need 128^3)
timeout 120 $PY benchmarks/bench_step.py "${SIZE[@]}" "${REP[@]}" --feature-pass volume --json "$OUT/bench_step_gpu.json"
# 2. the field's options as ratios (bf16 autocast, torch.compile, sliding-window batch, pinned memory)
timeout 150 $PY benchmarks/bench_options.py "${SIZE[@]}" "${REP[@]}" "${SKIP[@]}" --json "$OUT/bench_options_gpu.json"
# 3. the pretraining, in what is left
OUT="$OUT/pretrain" BUDGET_MIN=${PRETRAIN_MIN:-3.5} PY=$PY timeout 300 bash benchmarks/gpu_pretrain_extractor.sh
ls -lR "$OUT"
