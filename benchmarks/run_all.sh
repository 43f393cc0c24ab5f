#!/usr/bin/env bash
# Every benchmark figure in the README, in one go (about 20 minutes on a 2-core CPU).
# Optional: PEER=1 also times the PyTorch peer (../shared/perf/torch_ref.py, or $TORCH_REF)
# on the same train steps right after ours, since this machine's speed drifts.
set -euo pipefail
cd "$(dirname "$0")/.."
bench="python benchmarks/bench_train.py"
TORCH_REF="${TORCH_REF:-../shared/perf/torch_ref.py}"

# 1. The default VAE config (what `python -m derm_jax.main --config=configs/vae.py` trains).
$bench --config=configs/vae.py
# 2. The paper preset's model (ConvNeXt-Tiny VAE, 224 px) at a smaller batch.
$bench --config=configs/vae.py:paper --config.data.source=embedded --config.batch_size=8 \
    --steps=4 --repeats=2 --warmup=2
# 3. The train steps of the PyTorch peer: whole network trained, 224 px.
$bench --config=configs/classify.py --config.init.source=scratch --config.freeze_backbone=False \
    --config.image_size=224 --config.batch_size=32 --steps=4 --repeats=2 --warmup=2
[[ "${PEER:-0}" == "1" ]] && python "$TORCH_REF" --model effnet_lite0 --res 224 --batch 32
$bench --config=configs/classify.py --config.model.backbone=convnext_tiny \
    --config.init.source=scratch --config.freeze_backbone=False --config.image_size=224 \
    --config.batch_size=16 --steps=4 --repeats=2 --warmup=2
[[ "${PEER:-0}" == "1" ]] && python "$TORCH_REF" --model convnext_tiny --res 224 --batch 16
exit 0
