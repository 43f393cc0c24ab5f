#!/usr/bin/env bash
# Runs a derm_jax experiment on a Cloud TPU VM (one host or a multi-host pod slice such as
# v4-32 or v5litepod-16): creates the TPU if needed (on-demand, or a Spot slice through a
# queued resource), ships the committed code (`git archive HEAD`: tracked files only, no
# run folders, no .venv) to every worker, installs the environment once per worker, and
# runs the same training command on all workers (`--worker=all`, one process per host,
# `--jax_distributed`; JAX finds the coordinator from the TPU metadata).
#
#   TPU_NAME=derm-v5e ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-16 \
#   CONFIG=configs/compare.py:paper WORKDIR=/mnt/shared/derm/compare_paper \
#   bash launch/tpu_vm.sh --config.data.source=npz --config.data.npz_path=/mnt/shared/d.npz
#
# Prefix DRY_RUN=1 to print every command (one per line, "+ ", shell-quoted) and run none.
# Rerunning the same command is the resume: the TPU is reused (or recreated if preempted),
# the environment is not reinstalled, and training continues from the latest checkpoint in
# WORKDIR. With SPOT=1 the script does this itself after a preemption (MAX_RESTARTS times).
#
# Environment (required: TPU_NAME, ZONE, WORKDIR, and CONFIG or a trailing --config=...):
#   TPU_NAME          TPU VM (node) name.
#   ZONE              e.g. us-central2-b (v4), us-west4-a (v5e).
#   PROJECT           GCP project; default: gcloud's configured project.
#   ACCELERATOR_TYPE  default v5litepod-16 (4 hosts x 4 v5e chips); e.g. v4-8, v4-32.
#   RUNTIME_VERSION   default from the type: v5litepod-* v2-alpha-tpuv5-lite,
#                     v5p-* v2-alpha-tpuv5, v6e-* v2-alpha-tpuv6e, else tpu-ubuntu2204-base.
#   CONFIG            --config for derm_jax.main, e.g. configs/vae.py:paper (relative to
#                     the repository root).
#   WORKDIR           --workdir: a place that every host of the slice sees and that outlives
#                     the VM: a gs://bucket/path URL (checkpoints, logs, figures and the lock
#                     are written there through etils.epath, like Orbax; the workers get the
#                     [gcs] extra: gcsfs, google-cloud-storage; the lock on a bucket is
#                     advisory, see derm_jax/train/workdir_lock.py), or an absolute path on a
#                     shared persistent disk / Filestore / gcsfuse mount.
#   EXTRA_ARGS        more derm_jax.main flags, split on whitespace (trailing args are passed
#                     too, verbatim).
#   SPOT              1: create a Spot slice (queued resource, --spot) and recreate + resume
#                     it after a preemption; default 0 (on-demand `tpu-vm create`).
#   QR_NAME           queued-resource name for SPOT=1; default ${TPU_NAME}-qr.
#   CREATE            auto (default): create the TPU only if it does not exist (or was
#                     preempted); 1: always create; 0: never (use an existing TPU).
#   MAX_RESTARTS      relaunches after a preemption (0-1000); default 10 with SPOT=1, else 0.
#   POLL_SECONDS      wait between queued-resource state checks (0-86400); default 60.
#   DRY_RUN           1 (or true, yes, on): print the commands instead of running them
#                     (assumes no TPU exists yet; the read-only state queries are printed,
#                     not run); 0, false, no, off or unset: run them. Anything else is refused.
# Every setting is checked before the first gcloud or git command (one "error:" line and exit
# status 2 otherwise).
# Needs the gcloud CLI, authenticated, and a git checkout (uncommitted edits are not shipped).
set -euo pipefail

LAUNCH_NAME=tpu_vm.sh
# Only this (local) side sources common.sh; the workers run plain commands.
# fd 3 is the script's stdout, also from inside $(...): dry runs print there.
exec 3>&1
DRY_RUN_FD=3
. "$(dirname "$0")/common.sh"

: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}" "${ZONE:?set ZONE (e.g. us-west4-a)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-${ACCELERATOR:-v5litepod-16}}"
case "$ACCELERATOR_TYPE" in
  v5litepod-*) default_runtime=v2-alpha-tpuv5-lite ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  *) default_runtime=tpu-ubuntu2204-base ;;
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-${RUNTIME:-$default_runtime}}"
SPOT="${SPOT:-0}"
QR_NAME="${QR_NAME:-${TPU_NAME}-qr}"
CREATE="${CREATE:-auto}"
POLL_SECONDS="${POLL_SECONDS:-60}"
if [[ "$SPOT" == 1 ]]; then default_restarts=10; else default_restarts=0; fi
MAX_RESTARTS="${MAX_RESTARTS:-$default_restarts}"
[[ "$SPOT" == 0 || "$SPOT" == 1 ]] || die "SPOT must be 0 or 1, not '$SPOT'"
[[ "$CREATE" =~ ^(auto|0|1)$ ]] || die "CREATE must be auto, 0 or 1, not '$CREATE'"
check_int MAX_RESTARTS 0 1000
check_int POLL_SECONDS 0 86400

# derm_jax.main flags: CONFIG / WORKDIR (or --config= / --workdir= among the trailing args).
parse_main_args "" "$@"
[[ -n "$WORKDIR" ]] \
  || die "set WORKDIR (a gs:// URL or an absolute path shared by all hosts)"
case "$WORKDIR" in
  gs://?*) ;;
  /home/*/derm_jax|/home/*/derm_jax/*|/home/*/derm_jax_venv*)
    die "WORKDIR=$WORKDIR is inside the code folder that every launch replaces" ;;
  /*) ;;
  *) die "WORKDIR must be a gs:// URL or an absolute path on the workers, not '$WORKDIR'" ;;
esac

REPO_DIR="$(cd "$(dirname "$0")/.." && pwd)"
COMMIT="$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null)" \
  || die "$REPO_DIR is not a git checkout with a commit: only committed, tracked code is shipped"
if [[ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no)" ]]; then
  log "warning: uncommitted changes to tracked files are NOT shipped (commit ${COMMIT:0:12} is)"
fi
# The environment is reinstalled only when pyproject.toml (the dependencies) changes.
DEPS_KEY="$(git -C "$REPO_DIR" rev-parse "HEAD:pyproject.toml" 2>/dev/null | cut -c1-12)"
DEPS_KEY="${DEPS_KEY:-none}"

gc=("--zone=$ZONE")
[[ -z "${PROJECT:-}" ]] || gc+=("--project=$PROJECT")

# Read-only state queries; print nothing when the resource does not exist (or on a dry run).
node_state() {
  local cmd=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${gc[@]}" "--format=value(state)")
  if [[ "$DRY_RUN" == 1 ]]; then show "${cmd[@]}" >&3; return 0; fi
  "${cmd[@]}" 2>/dev/null || true
}
qr_state() {
  local cmd=(gcloud compute tpus queued-resources describe "$QR_NAME" "${gc[@]}"
             "--format=value(state.state)")
  if [[ "$DRY_RUN" == 1 ]]; then show "${cmd[@]}" >&3; return 0; fi
  "${cmd[@]}" 2>/dev/null || true
}

wait_active() {
  local state
  while true; do
    state="$(qr_state)"
    [[ "$DRY_RUN" != 1 ]] || return 0
    case "$state" in
      ACTIVE) log "queued resource $QR_NAME is ACTIVE"; return 0 ;;
      FAILED|SUSPENDED|SUSPENDING|"") die "queued resource $QR_NAME is '${state:-missing}'" ;;
      *) log "queued resource $QR_NAME is $state; checking again in ${POLL_SECONDS}s"
         sleep "$POLL_SECONDS" ;;
    esac
  done
}

create_tpu() {
  if [[ "$SPOT" == 1 ]]; then
    run gcloud compute tpus queued-resources create "$QR_NAME" "--node-id=$TPU_NAME" "${gc[@]}" \
      "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION" --spot
    wait_active
  else
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${gc[@]}" \
      "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION"
  fi
}

delete_tpu() {
  if [[ "$SPOT" == 1 ]]; then
    run gcloud compute tpus queued-resources delete "$QR_NAME" "${gc[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${gc[@]}" --quiet
  fi
}

# Makes sure the TPU exists and is usable: creates it, or recreates it after a preemption.
ensure_tpu() {
  local state
  [[ "$CREATE" != 0 ]] || return 0
  if [[ "$CREATE" == 1 ]]; then create_tpu; return 0; fi
  if [[ "$SPOT" == 1 ]]; then
    state="$(qr_state)"
    case "$state" in
      "") create_tpu ;;
      ACTIVE) log "reusing $QR_NAME ($TPU_NAME)" ;;
      WAITING_FOR_RESOURCES|PROVISIONING|ACCEPTED|CREATING) wait_active ;;
      SUSPENDED|SUSPENDING|FAILED) log "$QR_NAME is $state (preempted?): recreating it"
                                   delete_tpu; create_tpu ;;
      *) die "queued resource $QR_NAME is in state $state; wait, or delete it and rerun" ;;
    esac
  else
    state="$(node_state)"
    case "$state" in
      "") create_tpu ;;
      READY) log "reusing TPU $TPU_NAME" ;;
      PREEMPTED|TERMINATED) log "$TPU_NAME is $state: recreating it"; delete_tpu; create_tpu ;;
      *) die "TPU $TPU_NAME is in state $state; wait until READY and rerun" ;;
    esac
  fi
}

# True when the slice is gone or not READY (preempted), i.e. a failure was not the code's.
tpu_lost() {
  [[ "$SPOT" != 1 || "$(qr_state)" == ACTIVE ]] || return 0
  [[ "$(node_state)" == READY ]] && return 1 || return 0
}

# Ships the code to every worker and installs the environment there once.
tarball="${TMPDIR:-/tmp}/derm_jax-${COMMIT:0:12}.tgz"
setup_workers() {
  run git -C "$REPO_DIR" archive --format=tar.gz "--output=$tarball" HEAD -- . \
    ':(exclude)runs' ':(exclude)workdirs' ':(exclude)*.whl' ':(exclude).venv'
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:derm_jax.tgz" "${gc[@]}" --worker=all
  local venv='~/derm_jax_venv' marker="~/derm_jax_venv/.installed-$DEPS_KEY"
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gc[@]}" --worker=all "--command=set -eu; \
rm -rf ~/derm_jax.new; mkdir -p ~/derm_jax.new; tar -xzf ~/derm_jax.tgz -C ~/derm_jax.new; \
rm -rf ~/derm_jax; mv ~/derm_jax.new ~/derm_jax; cd ~/derm_jax; echo $COMMIT > COMMIT; \
if test -f $marker; then echo derm_jax: environment up to date; else \
sudo apt-get -qq -o DPkg::Lock::Timeout=300 update; \
sudo apt-get -qq -o DPkg::Lock::Timeout=300 install -y python3-venv; python3 -m venv $venv; \
$venv/bin/python -m pip install -q --upgrade pip; $venv/bin/python -m pip install -q -e '.[tpu,gcs]'; \
touch $marker; fi"
}

remote_main=""
for a in "${main_args[@]}"; do remote_main+=" $(q "$a")"; done
train() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gc[@]}" --worker=all "--command=cd \
~/derm_jax && ~/derm_jax_venv/bin/python -m derm_jax.main --jax_distributed$remote_main"
}

[[ "$DRY_RUN" == 1 ]] || trap 'rm -f "$tarball"' EXIT
log "$ACCELERATOR_TYPE ($RUNTIME_VERSION) $TPU_NAME in $ZONE, commit ${COMMIT:0:12}, \
workdir $WORKDIR$([[ "$SPOT" == 1 ]] && echo ", spot, up to $MAX_RESTARTS restarts")"
restarts=0
while true; do
  ensure_tpu
  setup_workers
  rc=0
  train || rc=$?
  [[ "$rc" != 0 ]] || { log "$([[ "$DRY_RUN" == 1 ]] && echo "dry run, nothing run" \
                               || echo "training finished")"; exit 0; }
  if (( restarts < MAX_RESTARTS )) && tpu_lost; then
    restarts=$((restarts + 1))
    CREATE=auto
    log "training stopped (exit $rc) and the TPU is gone: restart $restarts/$MAX_RESTARTS, \
resuming from $WORKDIR"
    continue
  fi
  log "training failed (exit $rc)"
  exit "$rc"
done
