# Shared helpers of the launch scripts (sourced, not run). Before sourcing, set LAUNCH_NAME
# (the prefix of messages) and optionally DRY_RUN_FD (where `run` prints on a dry run;
# default 1 = stdout).
#
# Every setting is validated before the first command that does anything (sbatch, srun,
# gcloud, training): a bad value stops the script with one line
# "<script>: error: NAME must be ..., not '<value>'" and exit status 2. The checks:
#   check_bool NAME            1/true/yes/on -> 1; 0/false/no/off/empty -> 0 (any case).
#   check_int NAME MIN MAX [LABEL]   digits only, MIN <= value <= MAX (normalised to
#                              decimal); the message names LABEL (default NAME).
#   check_fraction NAME        a decimal number in (0, 1], e.g. 0.9.
# Sourcing this file checks DRY_RUN (unset = 0), so a misspelt dry run never runs anything.
die() { echo "$LAUNCH_NAME: error: $*" >&2; exit 2; }
log() { echo "$LAUNCH_NAME: $*" >&2; }

check_bool() {
  local name="$1" value="${!1-}" result="" restore
  restore="$(shopt -p nocasematch || true)"  # (bash 3.2 has no ${value,,})
  shopt -s nocasematch
  case "$value" in
    1|true|yes|on) result=1 ;;
    0|false|no|off|"") result=0 ;;
  esac
  eval "$restore"
  [[ -n "$result" ]] \
    || die "$name must be 1, true, yes or on (or 0, false, no, off, empty), not '$value'"
  printf -v "$name" '%s' "$result"
}

check_int() {
  local name="$1" min="$2" max="$3" label="${4:-$1}" value="${!1-}"
  # The length test comes first: bash arithmetic on a longer number would overflow.
  if [[ ! "$value" =~ ^[0-9]+$ ]] || (( ${#value} > 18 )) \
     || (( 10#$value < min || 10#$value > max )); then
    die "$label must be a whole number from $min to $max, not '$value'"
  fi
  printf -v "$name" '%d' "$((10#$value))"
}

check_fraction() {
  local name="$1" value="${!1-}" int frac
  if [[ "$value" =~ ^([0-9]*)(\.([0-9]*))?$ ]]; then
    int="${BASH_REMATCH[1]}" frac="${BASH_REMATCH[3]}"
    if [[ "$int" =~ ^0*$ && "$frac" =~ [1-9] ]] || [[ "$int" =~ ^0*1$ && "$frac" =~ ^0*$ ]]; then
      return 0
    fi
  fi
  die "$name must be a number in (0, 1], e.g. 0.9, not '$value'"
}

DRY_RUN="${DRY_RUN-0}"
check_bool DRY_RUN
# One word, quoted so that it can be pasted back into a shell.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then printf '%s' "$1"
  else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}
show() { local out="+" a; for a in "$@"; do out+=" $(q "$a")"; done; printf '%s\n' "$out"; }
# Prints a command (fd DRY_RUN_FD on a dry run, stderr otherwise) and runs it unless DRY_RUN=1
# (DRY_RUN is 1 or 0 once this file is sourced).
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
