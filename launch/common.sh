# Shared helpers of the launch scripts (sourced, not run). Before sourcing, set LAUNCH_NAME
# (the prefix of messages) and optionally DRY_RUN_FD (where `run` prints on a dry run;
# default 1 = stdout).
DRY_RUN="${DRY_RUN:-0}"
die() { echo "$LAUNCH_NAME: error: $*" >&2; exit 2; }
log() { echo "$LAUNCH_NAME: $*" >&2; }
# One word, quoted so that it can be pasted back into a shell.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() { local out="+" a; for a in "$@"; do out+=" $(q "$a")"; done; printf '%s\n' "$out"; }
# Prints a command (fd DRY_RUN_FD on a dry run, stderr otherwise) and runs it unless DRY_RUN=1.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then show "$@" >&"${DRY_RUN_FD:-1}"; else show "$@" >&2; "$@"; fi
}

# parse_main_args WORKDIR_HINT ARGS...: sets main_args, the derm_jax.main flags, from CONFIG /
# WORKDIR (or --config= / --workdir= among ARGS), EXTRA_ARGS and ARGS. Without WORKDIR and
# --workdir it dies with "set WORKDIR (WORKDIR_HINT) or pass --workdir=..."; an empty
# WORKDIR_HINT instead sets WORKDIR from --workdir= (possibly empty) for the caller to check.
parse_main_args() {
  local workdir_hint="$1" a config_arg="" workdir_arg=""
  shift
  for a in "$@"; do
    case "$a" in
      --config=*) config_arg="${a#--config=}" ;;
      --workdir=*) workdir_arg="${a#--workdir=}" ;;
      --config|--workdir) die "write $a=VALUE as one argument" ;;
    esac
  done
  main_args=()
  if [[ -n "${CONFIG:-}" ]]; then
    [[ -z "$config_arg" || "$config_arg" == "$CONFIG" ]] \
      || die "CONFIG=$CONFIG but --config=$config_arg"
    [[ -n "$config_arg" ]] || main_args+=("--config=$CONFIG")
  elif [[ -z "$config_arg" ]]; then
    die "set CONFIG (e.g. CONFIG=configs/vae.py:paper) or pass --config=..."
  fi
  if [[ -n "${WORKDIR:-}" ]]; then
    [[ -z "$workdir_arg" || "$workdir_arg" == "$WORKDIR" ]] \
      || die "WORKDIR=$WORKDIR but --workdir=$workdir_arg"
    [[ -n "$workdir_arg" ]] || main_args+=("--workdir=$WORKDIR")
  elif [[ -z "$workdir_hint" ]]; then
    WORKDIR="$workdir_arg"
  elif [[ -z "$workdir_arg" ]]; then
    die "set WORKDIR ($workdir_hint) or pass --workdir=..."
  fi
  local extra_args
  read -r -a extra_args <<< "${EXTRA_ARGS:-}"
  main_args+=(${extra_args[@]+"${extra_args[@]}"} "$@")
}
