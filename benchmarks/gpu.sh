#!/usr/bin/env bash
# The prepared GPU check (issue 23): stage-loop throughput against bare passes, and whole runs at
# 224 px with the ImageNet-1K vocabulary, on CUDA in fp32 and bf16; at most 8 minutes on one GPU.
# Run as is from the repository root on a CUDA machine: bash benchmarks/gpu.sh [OUTDIR]
# Every step has its own time limit, so one slow step cannot take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
python - <<'PY' || { echo "no CUDA device: this check needs one" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

step() {  # step SECONDS NAME COMMAND...: run, log, and note a timeout without stopping the script
    local limit="$1" name="$2"; shift 2
    echo; echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" 2>"$out/$name.err" | tee "$out/$name.md"
    local rc=${PIPESTATUS[0]}
    echo "-- $name: rc $rc in $((SECONDS - start)) s"
}

# data first, outside the timed steps: random-weight models, generated 224-px images (about 7,000 PNGs)
step 75 "prepare" python benchmarks/realscale.py --prepare-only --templates 80 --images 2048 --eval-images 2048 \
    --work "$out/work"
step 30 "prepare-growth" python benchmarks/realscale.py --prepare-only --archs ViT-B-32-quickgelu --templates 1 \
    --images 8 --eval-images 256 --eval-growth 10 --work "$out/work"
for p in fp32 bf16; do  # item 4: every loop against bare forward(+backward), tiny models and ViT-B-32 at 224 px
    step 45 "throughput-$p" python benchmarks/throughput.py --device cuda --precision "$p" \
        --models tiny-vit,tiny-resnet,vit-b-32 --steps 20 --json "$out/throughput-$p.json"
done
for p in fp32 bf16; do  # item 3 on CUDA: both architectures, the quick profile at full data size
    step 45 "realscale-quick-$p" python benchmarks/realscale.py --device cuda --precision "$p" --profile quick \
        --templates 80 --images 2048 --n-images 1024 --eval-images 2048 --eval-batch-size 256 \
        --work "$out/work" --json "$out/realscale-quick-$p.json"
done
# memory of the evaluation alone on N and 10 N images (10 N streams from disk)
step 45 "eval-growth" python benchmarks/realscale.py --device cuda --archs ViT-B-32-quickgelu --templates 1 \
    --images 8 --eval-images 256 --eval-growth 10 --no-run --eval-batch-size 256 --work "$out/work" \
    --json "$out/eval-growth.json"
# the cost model's target: one default run on RN50 / ImageNet-1K vocabulary in bf16 (the projection's check)
step 120 "realscale-default-rn50-bf16" python benchmarks/realscale.py --device cuda --precision bf16 \
    --profile default --archs RN50-quickgelu --templates 80 --images 2048 --n-images 1024 --eval-images 2048 \
    --eval-batch-size 256 --work "$out/work" --json "$out/realscale-default-bf16.json"
step 20 "costmodel" python benchmarks/costmodel.py --eval-images 2048
echo; echo "results: $out/*.md and *.json"
