#!/usr/bin/env bash
# One device run: derm_jax's train steps (bf16 and fp32; data on the device and fed through
# Grain) and the PyTorch peer's (bf16 autocast + channels_last, eager and torch.compile;
# fp32/TF32) on the same GPU, then the ratio table with TFLOP/s and MFU; optionally the
# `configs/compare.py:recipe` study's cold-start wall time for seed 0 and for seeds 0-2 (one
# VAE per seed), the steps/s per member of its classifier program, and a cold then a warm
# `derm_jax.evaluate`.
#   bash benchmarks/gpu_compare.sh            # on the GPU machine, from the repo root
#   QUICK=1 bash benchmarks/gpu_compare.sh    # tiny sizes, to check the script on a CPU
# Environment:
#   TORCH_GPU_REF  the PyTorch peer script (default benchmarks/torch_gpu_ref.py; copy
#                  ../shared/perf/torch_gpu_ref.py, which is not part of the project)
#   LOG_DIR        where the log, the table and the study's report go (default /tmp)
#   RECIPE_NPZ     a full dermamnist.npz: also time the recipe study on it
#   STUDY_DIR      the studies' parent folder (default /tmp/derm_jax_recipe_study; emptied)
#   STEP_TIMEOUT   seconds each benchmark may take before it is skipped (default 150)
#   RECIPE_TIMEOUT seconds the study may take (default 300)
#   HONEST=1       the :honest study (imagenet, vae, imagenet_simclr, micle; ISIC 2018 test
#                  images as outside set), seeds 0-2, on the official and the lesion split
#                  (HONEST_TIMEOUT per split, default 600 s)
#   ALL_ARMS=1     last, the all-arms study: arms imagenet, vae, simclr, imagenet_simclr, seeds
#                  0-2, both protocols, label fractions 0.01/0.1/1 (ALL_ARMS_TIMEOUT, 420 s)
# On the GPU machine, start with the set-up lines of ../shared/device/on_device.sh.
# The most wanted figures come first (the study's wall times, then bf16 against torch bf16 +
# channels_last, then fp32), and every line is logged as it comes, so a run cut short
# still leaves what it measured. Pack LOG_DIR into one archive to bring it back.
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
  RECIPE_SIZE="--config.smoke_steps=3"
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
study() {  # seeds label [overrides...]: the recipe study from an empty workdir (and cache)
  [[ -n "${RECIPE_NPZ:-}" ]] || return 0
  local wd="${STUDY_DIR:-/tmp/derm_jax_recipe_study}/$2"
  rm -rf "$wd"
  say "recipe study, seeds $1, on $RECIPE_NPZ"
  local t0=$SECONDS
  timeout "${RECIPE_TIMEOUT:-300}" python3 -m derm_jax.main \
      --config=configs/compare.py:"${PRESET:-recipe}" \
      --workdir="$wd" --config.data.source=npz --config.data.npz_path="$RECIPE_NPZ" \
      --config.seeds="$1" $RECIPE_SIZE "${@:3}" > "$LOG_DIR/recipe_$2.log" 2>&1
  local rc=$?
  say "RECIPE_WALL_S seeds=$1 $((SECONDS - t0)) rc=$rc"
  # where the time went: each stage's wall time, each program's compilation, epoch times,
  # the classifier program's last progress line (steps/s = steps/s of every member)
  grep -o "Study wall time.*\|Stage [0-9].*\|Train program compiled.*\|Epoch .* took.*" \
      "$LOG_DIR/recipe_$2.log" | tee -a "$LOG"
  grep "steps/s" "$LOG_DIR/recipe_$2.log" | tail -n 2 | tee -a "$LOG"
  cp "$wd/report.md" "$LOG_DIR/recipe_report_$2.md" 2>/dev/null || true
  [[ -d "$wd/figures" ]] && cp -r "$wd/figures" "$LOG_DIR/recipe_figures_$2"
  return 0
}
evaluate_twice() {  # a cold, then a warm derm_jax.evaluate of the 3-seed study's arm
  local arm="${STUDY_DIR:-/tmp/derm_jax_recipe_study}/seeds3/arms/imagenet/seed_0"
  [[ -d "$arm" ]] || return 0
  export DERM_JAX_COMPILATION_CACHE="${STUDY_DIR:-/tmp/derm_jax_recipe_study}/eval_cache"
  rm -rf "$DERM_JAX_COMPILATION_CACHE"
  for run in cold warm; do
    local t0=$SECONDS
    timeout "$TMO" python3 -m derm_jax.evaluate --workdir="$arm" --split=test \
        >> "$LOG" 2>&1
    say "EVALUATE_WALL_S $run $((SECONDS - t0)) rc=$?"
  done
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$LOG" 2>&1
python3 -c "import jax, flax, torch; print('jax', jax.__version__, jax.devices(), 'flax', \
flax.__version__, 'torch', torch.__version__)" >> "$LOG" 2>&1
study "(0,)" seed0
study "(0,1,2)" seeds3
evaluate_twice
if [[ -n "${AUTOTUNE_LEVEL:-}" ]]; then  # the seed-0 study again with another autotune level
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=$AUTOTUNE_LEVEL" study "(0,)" \
      "seed0_autotune$AUTOTUNE_LEVEL"
fi
bench efficientnet_lite0 "$LITE_B" bfloat16
peer efficientnet_lite0 "$LITE_B" --amp bf16 --channels-last
peer efficientnet_lite0 "$LITE_B" --amp bf16 --channels-last --compile
bench convnext_tiny "$CNXT_B" bfloat16
peer convnext_tiny "$CNXT_B" --amp bf16 --channels-last
peer convnext_tiny "$CNXT_B" --amp bf16 --channels-last --compile
table
bench efficientnet_lite0 "$LITE_B" float32
bench convnext_tiny "$CNXT_B" float32
peer efficientnet_lite0 "$LITE_B"
peer convnext_tiny "$CNXT_B"
table
if [[ "${HONEST:-0}" == "1" ]]; then
  # The honest-evaluation study, three seeds (each with its own pretraining), on both
  # DermaMNIST splits; reports and figures land in LOG_DIR/honest_<split>/.
  for split in official lesion; do
    PRESET=honest RECIPE_TIMEOUT="${HONEST_TIMEOUT:-600}" study "(0,1,2)" "honest_$split" \
        --config.data.split="$split"
  done
fi
if [[ "${ALL_ARMS:-0}" == "1" ]]; then
  RECIPE_TIMEOUT="${ALL_ARMS_TIMEOUT:-420}" study "(0,1,2)" all_arms_seeds3 \
      --config.arms="('imagenet','vae','simclr','imagenet_simclr')" \
      --config.linear_probe=True --config.label_fractions="(0.01,0.1,1.0)"
fi
