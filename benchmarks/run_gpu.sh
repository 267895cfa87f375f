#!/usr/bin/env bash
# Every CUDA measurement of the speed benchmark in one call (issue 6): base model, 224px, batch 64, 64 text tokens
# of which half are padding, bf16 autocast. Logs and JSON go to $OUT when set, else to benchmarks/results/.
#
#   bash benchmarks/run_gpu.sh               # four runs, each under its own time limit (about 9.5 minutes at most)
#   STEPS=10 bash benchmarks/run_gpu.sh      # fewer timed rounds
#
# The GPU machine has torch, timm and transformers but neither torchscale nor a network: put torchscale's wheel in
# wheels/ first (see benchmarks/README.md). fairscale is optional: the benchmark stands in for the two helpers
# torchscale imports from it.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR=${OUT:-benchmarks/results}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
mkdir -p "$OUT_DIR"

for package in torchscale fairscale; do
  if ! python -c "import $package" 2>/dev/null; then
    wheel=$(ls wheels/"$package"-*.whl 2>/dev/null | head -n 1)
    if [ -n "$wheel" ]; then
      pip install --quiet --no-deps --no-index "$wheel"
    elif [ "$package" = torchscale ]; then
      echo "torchscale is not installed and wheels/ has no torchscale wheel; see benchmarks/README.md" >&2
      exit 1
    fi
  fi
done

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"
python -c "import timm; print('timm', timm.__version__)" 2>/dev/null || echo "timm not installed"

COMMON=(--device cuda --dtype bf16 --size base --image-size 224 --batch-size 64 --text-length 64
        --pad-fraction 0.5 --steps "$STEPS" --warmup "$WARMUP")

run() {  # name, time limit in seconds, extra arguments...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  timeout "$limit" python benchmarks/benchmark_speed.py "${COMMON[@]}" "$@" \
    --output "$OUT_DIR/$name.json" 2>&1 | tee "$OUT_DIR/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]}"
}

# the main comparison: torchscale vs ours (SDPA) vs timm ViT-B/16 and a plain HF ViT, with peak memory
run cuda_bf16_sdpa 150 --attn-implementation sdpa
# torch.compile(ours): one compilation per workload (reported), torchscale timed again as the in-run baseline
run cuda_bf16_sdpa_compile 240 --attn-implementation sdpa --compile --skip-timm --skip-plain-vit \
  --workloads image image_text train
# eager attention (our bit-faithful mode: fp32 softmax and GELU)
run cuda_bf16_eager 90 --attn-implementation eager --skip-timm --skip-plain-vit --workloads image_text train
# flex attention: the text padding as a block mask instead of SDPA's dense boolean mask
run cuda_bf16_flex 90 --attn-implementation flex_attention --skip-timm --skip-plain-vit --workloads image_text train
