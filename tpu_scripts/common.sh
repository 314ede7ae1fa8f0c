# shellcheck shell=bash
# Sourced by the tpu_scripts: flag parsing, validation and a `run` that prints each gcloud
# command (shell-quoted, ready to paste) and executes it unless --dry-run was given.
# User values are only ever passed as separate, quoted words: nothing here evaluates them.
set -euo pipefail

declare -A FLAGS=()
GIN_BINDINGS=()
DRY_RUN=0

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# parse_flags "VALUE_FLAGS" "BOOLEAN_FLAGS" "$@": --flag=value or --flag value; --gin repeats.
parse_flags() {
  local value_flags=" $1 " boolean_flags=" $2 dry_run " key value
  shift 2
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --*=*) key=${1%%=*} value=${1#*=}; shift ;;
      --*) key=$1 value=""; shift ;;
      *) die "unexpected argument '$1'; flags are written --name=value (see --help)" ;;
    esac
    key=${key#--}
    key=${key//-/_}
    if [[ $boolean_flags == *" $key "* ]]; then
      [[ -z $value ]] || die "--${key//_/-} takes no value"
      FLAGS[$key]=1
    elif [[ $value_flags == *" $key "* ]]; then
      if [[ -z $value ]]; then
        (($#)) || die "--${key//_/-} needs a value"
        value=$1
        shift
      fi
      if [[ $key == gin ]]; then GIN_BINDINGS+=("$value"); else FLAGS[$key]=$value; fi
    else
      die "unknown flag --${key//_/-} (see --help)"
    fi
  done
  DRY_RUN=${FLAGS[dry_run]:-0}
}

require() {
  local key
  for key; do
    [[ -n ${FLAGS[$key]:-} ]] || die "--${key//_/-} is required (see --help)"
  done
}

# validate KEY REGEX DESCRIPTION: an unset optional flag passes.
validate() {
  local key=$1 pattern=$2 description=$3
  if [[ -n ${FLAGS[$key]:-} && ! ${FLAGS[$key]} =~ $pattern ]]; then
    die "--${key//_/-}='${FLAGS[$key]}' is not $description"
  fi
}

# The flags every script shares: which TPU, where, in which project.
validate_node_flags() {
  require name zone
  validate name '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$' 'a TPU name (lowercase letters, digits, -)'
  validate zone '^[a-z]+-[a-z]+[0-9]+-[a-z]$' 'a zone such as us-central2-b'
  validate project '^[a-z][-a-z0-9]{4,28}[a-z0-9]$' 'a project id'
}

# gcloud's --zone and --project words for the shared flags.
location_flags() {
  LOCATION=("--zone=${FLAGS[zone]}")
  if [[ -n ${FLAGS[project]:-} ]]; then LOCATION+=("--project=${FLAGS[project]}"); fi
}

# quote WORD...: one string a POSIX shell splits back into exactly these words; a word with
# anything but safe characters is single-quoted (as Python's shlex.quote does).
quote() {
  local word separator=""
  for word; do
    if [[ $word =~ ^[-A-Za-z0-9_./=:@%+,]+$ ]]; then
      printf '%s%s' "$separator" "$word"
    else
      printf "%s'%s'" "$separator" "${word//\'/\'\\\'\'}"
    fi
    separator=" "
  done
}

# run COMMAND...: prints it quoted; runs it unless --dry-run.
run() {
  quote "$@"
  printf '\n'
  if ((DRY_RUN)); then return 0; fi
  command -v "$1" >/dev/null || die "$1 is not installed (https://cloud.google.com/sdk/docs/install)"
  "$@"
}

# ssh_workers WORKER REMOTE_COMMAND: one command on one worker (a number) or on all of them.
ssh_workers() {
  location_flags
  run gcloud compute tpus tpu-vm ssh "${FLAGS[name]}" "${LOCATION[@]}" "--worker=$1" \
    "--command=$2"
}

# shellcheck disable=SC2034  # read by the scripts that source this file
# Where setup.sh checks out the code and launch.sh leaves its log and pid, in each worker's home.
readonly REMOTE_CHECKOUT=flan_jax REMOTE_LOG=flan_jax_run.log REMOTE_PID=flan_jax_run.pid
