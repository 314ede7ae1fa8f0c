#!/usr/bin/env bash
# Requests a Cloud TPU slice as a queued resource (granted when capacity frees up).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/create.sh --name=NAME --zone=ZONE --accelerator-type=TYPE
         [--runtime-version=VERSION] [--project=PROJECT] [--spot | --reserved] [--dry-run]

  --accelerator-type  e.g. v4-64 (32 chips: Flan-T5-XXL), v4-1024 (512 chips: Flan-PaLM 540B),
                      v5litepod-16, v5p-128, v6e-64
  --runtime-version   TPU VM image (default tpu-ubuntu2204-base)
  --spot | --reserved preemptible capacity, or the project's reservation
  --dry-run           print the gcloud command without running it
Then watch it with: gcloud compute tpus queued-resources describe NAME --zone=ZONE
USAGE
}

parse_flags "name zone project accelerator_type runtime_version" "spot reserved" "$@"
validate_node_flags
require accelerator_type
validate accelerator_type '^v[0-9][a-z]*-[0-9]+$' 'an accelerator type such as v4-64'
FLAGS[runtime_version]=${FLAGS[runtime_version]:-tpu-ubuntu2204-base}
validate runtime_version '^[A-Za-z0-9][-A-Za-z0-9._]*$' 'a runtime version such as tpu-ubuntu2204-base'
if [[ -n ${FLAGS[spot]:-} && -n ${FLAGS[reserved]:-} ]]; then
  die "--spot and --reserved exclude each other: pick one capacity type"
fi

location_flags
command=(gcloud compute tpus queued-resources create "${FLAGS[name]}"
  "--node-id=${FLAGS[name]}" "${LOCATION[@]}"
  "--accelerator-type=${FLAGS[accelerator_type]}"
  "--runtime-version=${FLAGS[runtime_version]}")
if [[ -n ${FLAGS[spot]:-} ]]; then command+=(--spot); fi
if [[ -n ${FLAGS[reserved]:-} ]]; then command+=(--reserved); fi
run "${command[@]}"
