#!/usr/bin/env bash
# The GPU check: one prepared script, under 8 minutes on one H100. Prints the machine, then the
# training throughput (images/s, FLOPs, MFU, excon/supcon ratio, 200-epoch CIFAR-100 estimate)
# and the step-time ratios, each also saved under $OUT (or /tmp/gpu_check).
#
#   bash benchmarks/gpu_check.sh            # python3 with torch + torchvision on the machine
#
# excon is used from this checkout (PYTHONPATH); packages the machine lacks can come as wheels
# in .whl/, for the machine's Python: captum==0.9.0 (Grad-CAM), kornia==0.9.0 and kornia-rs==0.2.0
# (train.augment: device), e.g. pip download --no-deps --python-version 3.12 --only-binary=:all:
# --platform manylinux2014_x86_64 -d .whl captum==0.9.0 kornia==0.9.0 kornia-rs==0.2.0
# Never part of CI: CI has no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
RESULTS=${OUT:-/tmp/gpu_check}
mkdir -p "$RESULTS"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"

failed=0
echo "== training throughput (ResNet-18, 32 px, batch 256, 8 loader workers)"
# Each step is bounded (240 + 120 + 90 s < 8 min in all) and a failed one does not skip the next.
timeout 240 "$PY" benchmarks/train_throughput.py --device cuda --batch 256 --steps 30 \
  --workers 8 | tee "$RESULTS/throughput.txt" || { echo "FAILED (exit $?): throughput"; failed=$((failed + 1)); }

echo "== the same, views made per batch on the GPU (train.augment: device)"
timeout 120 "$PY" benchmarks/train_throughput.py --device cuda --batch 256 --steps 30 \
  --augment device | tee "$RESULTS/throughput_device.txt" || { echo "FAILED (exit $?): device views"; failed=$((failed + 1)); }

echo "== step time, data on the GPU (ResNet-18, 32 px, batch 256)"
timeout 90 "$PY" benchmarks/step_time.py --device cuda --batch 256 --rounds 10 \
  | tee "$RESULTS/step_time.txt" || { echo "FAILED (exit $?): step time"; failed=$((failed + 1)); }
if [ -n "${SALIENCY_RUN:-}" ] && [ -n "${SALIENCY_DATA:-}" ]; then
  # Optional: a trained excon run and its prepared data, e.g. from `make run` carried along.
  echo "== ExCon accept decisions: fp32 saliency (the default) against bf16"
  timeout 120 "$PY" benchmarks/saliency_precision.py --device cuda --run "$SALIENCY_RUN" \
    --data "$SALIENCY_DATA" --out "$RESULTS/saliency_precision.json" \
    || { echo "FAILED (exit $?): saliency precision"; failed=$((failed + 1)); }
fi
[ "$failed" -eq 0 ] || { echo "$failed step(s) failed"; exit 1; }
