#!/usr/bin/env bash
# Runs a derm_jax experiment on all GPUs of this machine: one process that sees every visible
# GPU; the batch is sharded over all of them along the mesh's 'data' axis
# (jax.device_count()). No jax.distributed: a single process needs none.
#
#   CONFIG=configs/vae.py:paper WORKDIR=/data/runs/vae_paper \
#   bash launch/gpu_local.sh --config.data.source=npz --config.data.npz_path=/data/d.npz
#
# (or pass --config=... --workdir=... as arguments, as before). Prefix DRY_RUN=1 to print
# the command ("+ ", shell-quoted) and the GPU count without running it. Rerunning the same
# command resumes from the latest checkpoint in WORKDIR.
# First time: pip install -e '.[cuda]'. CUDA_VISIBLE_DEVICES is left as it is: unset means
# every GPU; set it (e.g. 0,1,2,3) to use fewer.
#
# Environment (required: CONFIG or a trailing --config=..., WORKDIR or --workdir=...):
#   CONFIG       --config for derm_jax.main, e.g. configs/vae.py:paper.
#   WORKDIR      --workdir, e.g. /data/runs/vae_paper.
#   EXTRA_ARGS   more derm_jax.main flags, split on whitespace (trailing args are passed too).
#   PYTHON       interpreter; default python (the active venv's).
#   XLA_PYTHON_CLIENT_MEM_FRACTION   share of each GPU's memory JAX preallocates: a number
#                in (0, 1]; default 0.9.
#   DRY_RUN      1 (or true, yes, on): print the command instead of running it; 0, false,
#                no, off or unset: run it. Anything else is refused.
# Every setting is checked before anything runs (one "error:" line and exit 2 otherwise).
set -euo pipefail

LAUNCH_NAME=gpu_local.sh
. "$(dirname "$0")/common.sh"

# derm_jax.main flags: CONFIG / WORKDIR (or --config= / --workdir= among the trailing args).
parse_main_args "the run directory" "$@"

XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
check_fraction XLA_PYTHON_CLIENT_MEM_FRACTION
MEM_FRACTION="$XLA_PYTHON_CLIENT_MEM_FRACTION"

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

# The GPUs this process will see: CUDA_VISIBLE_DEVICES if set, else all that nvidia-smi lists.
if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
  IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
  n_gpus="${#visible[@]}"
  source="CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi > /dev/null; then
  n_gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
  source="nvidia-smi -L"
else
  n_gpus=0
  source="no nvidia-smi on PATH"
fi
if [[ "$n_gpus" == 0 ]]; then
  [[ "$DRY_RUN" == 1 ]] || die "no GPU found ($source); on CPU run python -m derm_jax.main"
  log "warning: no GPU found ($source)"
fi
log "1 process using $n_gpus GPU(s) ($source)"
run env "XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION" "$PYTHON" -m derm_jax.main "${main_args[@]}"
