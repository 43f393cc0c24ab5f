#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per GPU on every node (8 per 8-GPU node),
# all of them in one jax.distributed job (`--jax_distributed`: JAX reads the SLURM
# environment, and each process takes the GPU numbered SLURM_LOCALID, so every GPU works).
#
# Submit from the repository root, with the environment (venv) that has derm_jax active:
#
#   NODES=2 GPUS_PER_NODE=8 PARTITION=gpu TIME=24:00:00 \
#   CONFIG=configs/compare.py:paper WORKDIR=/shared/runs/compare_paper \
#   bash launch/slurm_multinode.sh --config.data.source=npz \
#       --config.data.npz_path=/shared/dermamnist_224.npz
#
# Outside an allocation the script submits itself with sbatch (the resources below become
# sbatch flags); inside one (sbatch, salloc) it runs the job step with srun. Plain
# `sbatch launch/slurm_multinode.sh --config=... --workdir=...` also works (the #SBATCH
# header asks for 2 nodes x 8 GPUs). Prefix DRY_RUN=1 to print the sbatch (or srun) command,
# shell-quoted after "+ ", without running it. Resubmitting the same command resumes from
# the latest checkpoint in WORKDIR.
#
# Environment (required: CONFIG or a trailing --config=..., WORKDIR or --workdir=...):
#   CONFIG          --config for derm_jax.main, e.g. configs/vae.py:paper.
#   WORKDIR         --workdir: a directory on a filesystem shared by all nodes.
#   EXTRA_ARGS      more derm_jax.main flags, split on whitespace (trailing args too).
#   NODES           nodes to request (1-4096); default 2.
#   GPUS_PER_NODE   GPUs per node = processes per node (1-64); default 8.
#   CPUS_PER_TASK   CPU cores per process (data loading, 1-4096); default: the node's cores
#                   divided by GPUS_PER_NODE (SLURM_CPUS_ON_NODE / GPUS_PER_NODE).
#   PARTITION, TIME, ACCOUNT   sbatch --partition / --time / --account; default: unset.
#   JOB_NAME        default derm_jax.
#   SBATCH_EXTRA    more sbatch flags, split on whitespace (e.g. "--qos=high --requeue").
#   PYTHON          interpreter on the nodes; default python (the active venv's).
#   DRY_RUN         1 (or true, yes, on): print the commands instead of running them; 0,
#                   false, no, off or unset: run them. Anything else is refused.
# Every setting is checked before sbatch or srun runs (one "error:" line and exit 2
# otherwise).
#
#SBATCH --job-name=derm_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
set -euo pipefail

LAUNCH_NAME=slurm_multinode.sh
# sbatch runs a copy of this script from its spool folder: then common.sh is found in the
# checkout recorded at submission (DERM_JAX_REPO) or the submission directory.
common=""
for d in "$(dirname "$0")" ${DERM_JAX_REPO:+"$DERM_JAX_REPO/launch"} \
         ${SLURM_SUBMIT_DIR:+"$SLURM_SUBMIT_DIR/launch"}; do
  if [[ -f "$d/common.sh" ]]; then common="$d/common.sh"; break; fi
done
[[ -n "$common" ]] || { echo "slurm_multinode.sh: error: launch/common.sh not found next to \
$0, in DERM_JAX_REPO or in SLURM_SUBMIT_DIR: submit from the repository root" >&2; exit 2; }
. "$common"

# derm_jax.main flags: CONFIG / WORKDIR (or --config= / --workdir= among the trailing args).
parse_main_args "a directory on a filesystem all nodes share" "$@"

PYTHON="${PYTHON:-python}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
check_int GPUS_PER_NODE 1 64
[[ -z "${CPUS_PER_TASK:-}" ]] || check_int CPUS_PER_TASK 1 4096

if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  # Not in an allocation: submit this script, with the resources as sbatch flags.
  NODES="${NODES:-2}"
  check_int NODES 1 4096
  REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
  sbatch_args=("--job-name=${JOB_NAME:-derm_jax}" "--nodes=$NODES"
               "--ntasks-per-node=$GPUS_PER_NODE" "--gpus-per-node=$GPUS_PER_NODE" --exclusive)
  [[ -z "${CPUS_PER_TASK:-}" ]] || sbatch_args+=("--cpus-per-task=$CPUS_PER_TASK")
  [[ -z "${PARTITION:-}" ]] || sbatch_args+=("--partition=$PARTITION")
  [[ -z "${TIME:-}" ]] || sbatch_args+=("--time=$TIME")
  [[ -z "${ACCOUNT:-}" ]] || sbatch_args+=("--account=$ACCOUNT")
  read -r -a sbatch_extra <<< "${SBATCH_EXTRA:-}"
  sbatch_args+=(${sbatch_extra[@]+"${sbatch_extra[@]}"} "--chdir=$REPO_DIR"
                "--export=ALL,DERM_JAX_REPO=$REPO_DIR,GPUS_PER_NODE=$GPUS_PER_NODE,PYTHON=$PYTHON")
  log "$NODES node(s) x $GPUS_PER_NODE GPU(s) = $((NODES * GPUS_PER_NODE)) processes"
  run sbatch "${sbatch_args[@]}" "$REPO_DIR/launch/slurm_multinode.sh" "${main_args[@]}"
  exit 0
fi

# Inside the allocation (the batch script of the job, or salloc): one task per GPU.
# The SLURM variables are checked first, before anything runs.
NODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}"
[[ -n "$NODES" ]] || die "SLURM_JOB_NUM_NODES is not set: run this under sbatch or salloc"
check_int NODES 1 4096 SLURM_JOB_NUM_NODES
if [[ -z "${CPUS_PER_TASK:-}" ]]; then
  # srun does not inherit sbatch's --cpus-per-task (SLURM >= 22.05); without it each task
  # could be pinned to one core, which starves the data pipeline.
  cpus="${SLURM_CPUS_ON_NODE:-$GPUS_PER_NODE}"
  cpus="${cpus%%(*}"  # "64(x2)" style values
  check_int cpus 1 100000 SLURM_CPUS_ON_NODE
  CPUS_PER_TASK=$(( cpus / GPUS_PER_NODE > 0 ? cpus / GPUS_PER_NODE : 1 ))
fi
# sbatch runs a copy of this script, so the checkout is found from the environment.
REPO_DIR="${DERM_JAX_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"
[[ -f "$REPO_DIR/derm_jax/main.py" ]] \
  || die "$REPO_DIR is not the derm_jax checkout: submit from the repository root"
cd "$REPO_DIR"
if [[ -n "${SLURM_NTASKS_PER_NODE:-}" && "${SLURM_NTASKS_PER_NODE}" != "$GPUS_PER_NODE" ]]; then
  log "warning: the job has ${SLURM_NTASKS_PER_NODE} task(s) per node but GPUS_PER_NODE=\
$GPUS_PER_NODE; submit with --ntasks-per-node=$GPUS_PER_NODE (or without sbatch flags)"
fi
log "$NODES node(s) x $GPUS_PER_NODE GPU(s): $((NODES * GPUS_PER_NODE)) processes, \
$CPUS_PER_TASK CPU(s) each, one GPU each (SLURM_LOCALID)"
# No per-task GPU binding: every task sees all GPUs of its node and JAX's SLURM detection
# picks the one numbered SLURM_LOCALID (local_device_ids=[SLURM_LOCALID]).
run srun "--nodes=$NODES" "--ntasks=$((NODES * GPUS_PER_NODE))" \
  "--ntasks-per-node=$GPUS_PER_NODE" "--cpus-per-task=$CPUS_PER_TASK" --kill-on-bad-exit=1 \
  "$PYTHON" -m derm_jax.main --jax_distributed "${main_args[@]}"
