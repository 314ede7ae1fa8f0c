# shellcheck shell=bash
# Sourced by the tpu_scripts: flag parsing, validation and a `run` that prints each gcloud
# command (shell-quoted, ready to paste) and executes it unless --dry-run was given.
# User values are only ever passed as separate, quoted words: nothing here evaluates them.
set -euo pipefail

declare -A FLAGS=()
GIN_BINDINGS=()
ENV_VARS=()
DRY_RUN=0

die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# parse_flags "VALUE_FLAGS" "BOOLEAN_FLAGS" "$@": --flag=value or --flag value; --gin and
# --env repeat (into GIN_BINDINGS and ENV_VARS).
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
      case $key in
        gin) GIN_BINDINGS+=("$value") ;;
        env) ENV_VARS+=("$value") ;;
        *) FLAGS[$key]=$value ;;
      esac
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

# The flags every script shares: which TPU, where, in which project. Zones are REGION-LETTER
# (us-central2-b, europe-west4-a) or, in Google Cloud's AI zones, REGION-aiNLETTER
# (us-south1-ai1b).
validate_node_flags() {
  require name zone
  validate name '^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$' 'a TPU name (lowercase letters, digits, -)'
  validate zone '^[a-z]+-[a-z]+[0-9]+-([a-z]|ai[0-9]+[a-z]?)$' \
    'a zone such as us-central2-b, europe-west4-a or us-south1-ai1b'
  validate project '^[a-z][-a-z0-9]{4,28}[a-z0-9]$' 'a project id'
}

# --num-slices: slices in one queued resource, joined over the data-center network.
validate_num_slices() {
  FLAGS[num_slices]=${FLAGS[num_slices]:-1}
  validate num_slices '^[1-9][0-9]{0,2}$' 'a number of slices (1 or more)'
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

# steps STEP...: one remote shell command that runs the steps in order.
steps() {
  local joined
  joined=$(printf '%s; ' "$@")
  printf '%s' "${joined%; }"
}

# run COMMAND...: prints it quoted; runs it unless --dry-run.
run() {
  quote "$@"
  printf '\n'
  if ((DRY_RUN)); then return 0; fi
  command -v "$1" >/dev/null || die "$1 is not installed (https://cloud.google.com/sdk/docs/install)"
  "$@"
}

# ssh_workers NODE WORKER REMOTE_COMMAND: one command on the given node(s) (slices: a number
# or all) and worker(s) of the queued resource. --internal-ip reaches workers that have no
# external address, from a machine in the same VPC network.
ssh_workers() {
  location_flags
  local command=(gcloud compute tpus queued-resources ssh "${FLAGS[name]}" "${LOCATION[@]}"
    "--node=$1" "--worker=$2")
  if [[ -n ${FLAGS[internal_ip]:-} ]]; then command+=(--internal-ip); fi
  run "${command[@]}" "--command=$3"
}

# shellcheck disable=SC2034  # read by the scripts that source this file
# Where setup.sh checks out the code and launch.sh leaves its log and pid, in each worker's home.
readonly REMOTE_CHECKOUT=flan_jax REMOTE_LOG=flan_jax_run.log REMOTE_PID=flan_jax_run.pid
