#!/usr/bin/env bash
# Runs a derm_jax experiment on all GPUs of this machine (one process; the batch is sharded
# over every local GPU along the mesh's 'data' axis).
#
#   bash launch/gpu_local.sh --config=configs/vae.py:paper --workdir=/data/runs/vae_paper \
#       --config.data.source=npz --config.data.npz_path=/data/dermamnist_224.npz
#
# First time: pip install -e '.[cuda]'. Restrict GPUs with CUDA_VISIBLE_DEVICES.
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
python -m derm_jax.main "$@"
