#!/usr/bin/env bash
# The CPU Lite0 comparison of issue 7, in one run: derm_jax's EfficientNet-Lite0 train step
# (224 px, batch 32, fp32, whole network, AdamW; depthwise custom VJP) with its 1x1
# convolutions as 2-D matmuls (the CPU default, "shifted+dot"), as dots over the last axis
# of the 4-D feature map (the version before, "shifted+dot_nd") and as XLA convolutions (the
# one before that, "shifted+conv"), then the PyTorch peer eager and channels-last, then
# derm_jax again. The machine's speed drifts, so only figures from one invocation compare.
#   bash benchmarks/cpu_compare.sh            # TORCH_REF=path/to/torch_ref.py to override
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_REF="${TORCH_REF:-../shared/perf/torch_ref.py}"
REPEATS="${REPEATS:-5}"
python benchmarks/bench_depthwise.py --whole_step --image_size=224 --batch_size=32 \
    --impls=shifted --pointwise_impls=dot,dot_nd,conv --repeats="$REPEATS"
python "$TORCH_REF" --model effnet_lite0 --res 224 --batch 32 --steps=10
python "$TORCH_REF" --model effnet_lite0 --res 224 --batch 32 --steps=10 --channels-last
# Round two, same order, so a drift over the run shows up.
python benchmarks/bench_depthwise.py --whole_step --image_size=224 --batch_size=32 \
    --impls=shifted --repeats="$REPEATS"
