#!/usr/bin/env bash
# Multi-node GPU job under SLURM: one process per node, all GPUs of a node per process;
# jax.distributed.initialize() reads the SLURM environment to find the coordinator.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_multinode.sh \
#       --config=configs/compare.py:paper --workdir=/shared/runs/compare_paper \
#       --config.data.source=npz --config.data.npz_path=/shared/dermamnist_224.npz
#
#SBATCH --job-name=derm_jax
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
srun python -m derm_jax.main --jax_distributed "$@"
