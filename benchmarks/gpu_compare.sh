#!/usr/bin/env bash
# One device run: derm_jax's train steps (bf16 and fp32; device-resident and end to end
# through Grain) and the PyTorch peer's (bf16 autocast + channels_last, fp32/TF32) on the
# same GPU, then the ratio table with TFLOP/s and MFU; optionally the wall time of the whole
# `configs/compare.py:recipe` study.
#   bash benchmarks/gpu_compare.sh            # on the GPU machine, from the repo root
#   QUICK=1 bash benchmarks/gpu_compare.sh    # tiny sizes, to check the script on a CPU
# Environment:
#   TORCH_GPU_REF  the PyTorch peer script (default benchmarks/torch_gpu_ref.py; copy
#                  ../shared/perf/torch_gpu_ref.py, which is not part of the project)
#   LOG_DIR        where the log, the table and the study's report go (default /tmp)
#   RECIPE_NPZ     a full dermamnist.npz: also time the recipe study on it
#   STUDY_DIR      the study's workdir (default /tmp/derm_jax_recipe_study; emptied first)
#   STEP_TIMEOUT   seconds each benchmark may take before it is skipped (default 150)
#   RECIPE_TIMEOUT seconds the study may take (default 300)
# On the GPU machine, start with the set-up lines of ../shared/device/on_device.sh.
# The most wanted figures come first (bf16 against torch bf16 + channels_last, then the
# study, then fp32), and every line is logged as it comes, so a run cut short still
# leaves what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR="${LOG_DIR:-/tmp}"
mkdir -p "$LOG_DIR"
LOG="$LOG_DIR/gpu_compare.log"
: > "$LOG"
PEER="${TORCH_GPU_REF:-benchmarks/torch_gpu_ref.py}"
TMO="${STEP_TIMEOUT:-150}"
if [[ "${QUICK:-0}" == "1" ]]; then
  RES=32; LITE_B=8; CNXT_B=4; STEPS="--steps=2 --repeats=1 --warmup=1"; PSTEPS="--steps 2 --warmup 1"
  RECIPE_SIZE="--config.vae.total_steps=3 --config.classifier.total_steps=3"
else
  RES=224; LITE_B=128; CNXT_B=64; STEPS="--steps=20 --repeats=3 --warmup=5"; PSTEPS=""
  RECIPE_SIZE=""
fi
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
bench() {  # model batch dtype
  say "derm_jax $1 b$2 $3"
  timeout "$TMO" python3 benchmarks/bench_train.py --config=configs/classify.py \
      --config.model.backbone="$1" --config.init.source=scratch \
      --config.freeze_backbone=False --config.image_size="$RES" --config.batch_size="$2" \
      --config.eval_batch_size="$2" --config.dtype="$3" --config.input.num_threads=8 \
      $STEPS >> "$LOG" 2>&1 || say "FAILED ($?): derm_jax $1 b$2 $3"
}
peer() {  # timm model batch extra-args
  [[ -f "$PEER" ]] || { say "no PyTorch peer at $PEER: skipped"; return; }
  say "torch $*"
  timeout "$TMO" python3 "$PEER" --model "$1" --res "$RES" --batch "$2" $PSTEPS "${@:3}" \
      >> "$LOG" 2>&1 || say "FAILED ($?): torch $*"
}
table() { python3 benchmarks/ratio_table.py "$LOG" | tee "$LOG_DIR/gpu_table.md"; }
study() {  # the whole recipe study (VAE + both arms + report), wall time
  [[ -n "${RECIPE_NPZ:-}" ]] || return 0
  local wd="${STUDY_DIR:-/tmp/derm_jax_recipe_study}"
  rm -rf "$wd"
  say "recipe study on $RECIPE_NPZ"
  local t0=$SECONDS
  timeout "${RECIPE_TIMEOUT:-300}" python3 -m derm_jax.main --config=configs/compare.py:recipe \
      --workdir="$wd" --config.data.source=npz --config.data.npz_path="$RECIPE_NPZ" \
      $RECIPE_SIZE > "$LOG_DIR/recipe_study.log" 2>&1
  local rc=$?
  say "RECIPE_WALL_S $((SECONDS - t0)) rc=$rc"
  # where the time went: each stage's wall time and each first step's compilation
  grep -o "Study wall time.*\|Stage [0-9].*\|Train step compiled.*" "$LOG_DIR/recipe_study.log" \
      | tee -a "$LOG"
  cp "$wd/report.md" "$LOG_DIR/recipe_report.md" 2>/dev/null || true
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$LOG" 2>&1
python3 -c "import jax, flax, torch; print('jax', jax.__version__, jax.devices(), 'flax', \
flax.__version__, 'torch', torch.__version__)" >> "$LOG" 2>&1
bench efficientnet_lite0 "$LITE_B" bfloat16
peer efficientnet_lite0 "$LITE_B" --amp bf16 --channels-last
bench convnext_tiny "$CNXT_B" bfloat16
peer convnext_tiny "$CNXT_B" --amp bf16 --channels-last
table
study
bench efficientnet_lite0 "$LITE_B" float32
bench convnext_tiny "$CNXT_B" float32
peer efficientnet_lite0 "$LITE_B"
peer convnext_tiny "$CNXT_B"
table
