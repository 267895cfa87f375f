#!/usr/bin/env bash
# Every CUDA measurement and check in one call (issue 6): base model, 224px, batch 64, 64 text tokens of which half
# are padding, bf16 autocast. One log (gpu.log) and one JSON per benchmark run go to $OUT when set, else to
# benchmarks/results/.
#
#   bash benchmarks/run_gpu.sh                     # every step, each under its own time limit (13 minutes at most)
#   RUNS="sdpa profile tests" bash benchmarks/run_gpu.sh      # a subset (5 minutes at most), e.g. one call each
#   RUNS="compile flex" bash benchmarks/run_gpu.sh            # ... within a device call's 10-minute limit
#   STEPS=10 bash benchmarks/run_gpu.sh            # fewer timed rounds
#
# Limits from the H100 run of 2026-11-27: the compiled training step alone compiles for 107 s and the whole compile
# run took 232 s; flex attention's block-mask compilation took more than 35 s.
#
# The GPU machine has torch, timm and transformers but neither torchscale, bitsandbytes nor a network: put their
# wheels in wheels/ first (see benchmarks/README.md); every wheel there is installed with --no-deps. fairscale is
# optional: the benchmark stands in for the two helpers torchscale imports from it.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-benchmarks/results}
STEPS=${STEPS:-20}
RUNS=${RUNS:-sdpa compile profile tests flex}
WARMUP=${WARMUP:-3}
LOG="$OUT_DIR/gpu.log"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if ls wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --no-deps --no-index wheels/*.whl 2>&1 | grep -v "Running pip as" || true
fi
if ! "$PY" -c "import torchscale" 2>/dev/null; then
  echo "torchscale is not installed and wheels/ has no torchscale wheel; see benchmarks/README.md" >&2
  exit 1
fi

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
  "$PY" -c "import timm; print('timm', timm.__version__)" 2>/dev/null || echo "timm not installed"
  "$PY" -c "import bitsandbytes; print('bitsandbytes', bitsandbytes.__version__)" 2>/dev/null \
    || echo "bitsandbytes not installed"
} 2>&1 | tee -a "$LOG"

COMMON=(--device cuda --dtype bf16 --size base --image-size 224 --batch-size 64 --text-length 64
        --pad-fraction 0.5 --steps "$STEPS" --warmup "$WARMUP")

step() {  # name, time limit in seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

wants() { [[ " $RUNS " == *" $1 "* ]]; }

bench() {  # name, time limit in seconds, extra benchmark arguments...
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$PY" benchmarks/benchmark_speed.py "${COMMON[@]}" "$@" --output "$OUT_DIR/$name.json"
}

# the main comparison: torchscale vs ours (SDPA) vs timm ViT-B/16, a plain HF ViT and ours without routing, memory
wants sdpa && bench cuda_bf16_sdpa 90 --attn-implementation sdpa
# torch.compile(ours): one compilation per workload (reported), torchscale timed again as the in-run baseline
wants compile && bench cuda_bf16_sdpa_compile 300 --attn-implementation sdpa --compile --skip-timm --skip-plain-vit \
  --workloads image image_text train
# where the training step's time goes, ours and torchscale
wants profile && step profile_train_step 80 "$PY" benchmarks/profile_step.py --device cuda --batch-size 64 --top 25
# the GPU checks of the test suite: backends, bf16, compile, cached generation, bitsandbytes on CUDA
wants tests && step tests_cuda 120 "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider -rs
# flex attention: the text padding as a block mask instead of SDPA's dense boolean mask
wants flex && bench cuda_bf16_flex 150 --attn-implementation flex_attention --skip-timm --skip-plain-vit \
  --workloads image_text train
exit 0
