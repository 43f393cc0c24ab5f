#!/usr/bin/env bash
# Runs a derm_jax experiment on a Cloud TPU VM (single host or a pod slice), big_vision style:
# create the TPU VM, copy this checkout to every worker, install, run the same command on all
# workers (one process per host; jax.distributed finds the coordinator on Cloud TPU).
#
#   TPU_NAME=derm-v4-32 ZONE=us-central2-b ACCELERATOR=v4-32 \
#   WORKDIR=/mnt/disks/persist/derm/compare \
#   bash launch/tpu_vm.sh --config=configs/compare.py:paper \
#       --config.data.source=npz --config.data.npz_path=/mnt/disks/persist/dermamnist_224.npz
#
# WORKDIR must be a filesystem path visible to every host (a shared persistent disk or a
# gcsfuse mount): derm_jax writes its logs and metrics with ordinary file I/O.
# Set CREATE=0 to reuse an existing TPU VM. Needs the gcloud CLI, authenticated.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
CREATE="${CREATE:-1}"
REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"

if [[ "$CREATE" == "1" ]]; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi

tarball="$(mktemp -d)/derm_jax.tgz"
tar -C "$REPO_DIR" --exclude=.git --exclude=.venv -czf "$tarball" .
gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":~/derm_jax.tgz --zone="$ZONE" --worker=all

args="$(printf ' %q' "$@")"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e
  mkdir -p ~/derm_jax && tar -xzf ~/derm_jax.tgz -C ~/derm_jax && cd ~/derm_jax
  python3 -m venv ~/venv && . ~/venv/bin/activate
  pip install -q -e '.[tpu]'
  python -m derm_jax.main --jax_distributed --workdir=$WORKDIR $args
"
