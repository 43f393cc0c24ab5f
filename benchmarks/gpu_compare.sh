#!/usr/bin/env bash
# One device run: derm_jax's train steps (fp32 and bf16; device-resident and end to end
# through Grain) and the PyTorch peer's (fp32/TF32 and bf16 autocast + channels_last) on
# the same GPU, then the ratio table with TFLOP/s and MFU.
#   bash benchmarks/gpu_compare.sh            # on the GPU machine, from the repo root
#   QUICK=1 bash benchmarks/gpu_compare.sh    # tiny sizes, to check the script on a CPU
# Needs the PyTorch peer script at benchmarks/torch_gpu_ref.py (copy
# ../shared/perf/torch_gpu_ref.py there first; it is not part of the project) and, on the
# GPU machine, the set-up lines of ../shared/device/on_device.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG="${LOG:-/tmp/derm_jax_gpu_compare.log}"
: > "$LOG"
if [[ "${QUICK:-0}" == "1" ]]; then
  RES=32; LITE_B=8; CNXT_B=4; STEPS="--steps=2 --repeats=1 --warmup=1"
else
  RES=224; LITE_B=128; CNXT_B=64; STEPS="--steps=20 --repeats=3 --warmup=5"
fi
bench() {  # model batch dtype
  python3 benchmarks/bench_train.py --config=configs/classify.py \
      --config.model.backbone="$1" --config.init.source=scratch \
      --config.freeze_backbone=False --config.image_size="$RES" --config.batch_size="$2" \
      --config.eval_batch_size="$2" --config.dtype="$3" --config.input.num_threads=8 \
      $STEPS 2>&1 | tee -a "$LOG" | grep -E "RESULT|\(a\)|\(b\)|\(c\)" || true
}
peer() {  # timm model batch extra-args
  if [[ -f benchmarks/torch_gpu_ref.py ]]; then
    python3 benchmarks/torch_gpu_ref.py --model "$1" --res "$RES" --batch "$2" "${@:3}" \
        2>&1 | tee -a "$LOG" | grep TORCH || true
  fi
}
for dtype in float32 bfloat16; do
  bench efficientnet_lite0 "$LITE_B" "$dtype"
  bench convnext_tiny "$CNXT_B" "$dtype"
done
peer efficientnet_lite0 "$LITE_B"
peer efficientnet_lite0 "$LITE_B" --amp bf16 --channels-last
peer convnext_tiny "$CNXT_B"
peer convnext_tiny "$CNXT_B" --amp bf16 --channels-last
python3 benchmarks/ratio_table.py "$LOG"
