#!/usr/bin/env bash
# Requests a Cloud TPU slice (or several, for multi-slice) as a queued resource, granted when
# capacity frees up.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/create.sh --name=NAME --zone=ZONE --accelerator-type=TYPE
         [--runtime-version=VERSION] [--num-slices=N] [--spot | --reserved] [--internal-ip]
         [--valid-until-duration=DURATION] [--autocheckpoint] [--project=PROJECT] [--dry-run]

  --accelerator-type  e.g. v4-64 (32 chips: Flan-T5-XXL), v4-1024 (512 chips: Flan-PaLM 540B),
                      v5litepod-16, v5p-128, v6e-64
  --runtime-version   TPU VM image; default by generation: v4 tpu-ubuntu2204-base,
                      v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e
  --num-slices        N > 1: N slices of TYPE named NAME-0 .. NAME-(N-1), joined over the
                      data-center network (multi-slice); default 1, a node named NAME
  --spot | --reserved preemptible capacity, or the project's reservation
  --internal-ip       workers get internal addresses only (reach them from the same network)
  --valid-until-duration  give up on the request if it is not granted within this long
                      (e.g. 6h, 2d); gcloud's --valid-until-duration
  --autocheckpoint    a maintenance event first sends SIGTERM, so the run saves a checkpoint
                      (gcloud alpha's --autocheckpoint-enabled)
  --dry-run           print the gcloud command without running it
Then watch it with: gcloud compute tpus queued-resources describe NAME --zone=ZONE
USAGE
}

# runtime_version TYPE: the TPU VM image each generation boots (Cloud TPU's runtime versions).
runtime_version() {
  case $1 in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5e-*) die "--accelerator-type='$1': v5e's accelerator types are v5litepod-N" ;;
    *) die "--accelerator-type='$1' has no default image here: pass --runtime-version" ;;
  esac
}

parse_flags "name zone project accelerator_type runtime_version num_slices valid_until_duration" \
  "spot reserved internal_ip autocheckpoint" "$@"
validate_node_flags
validate_num_slices
require accelerator_type
validate accelerator_type '^v[0-9][a-z]*-[0-9]+$' 'an accelerator type such as v4-64'
if [[ -z ${FLAGS[runtime_version]:-} ]]; then
  FLAGS[runtime_version]=$(runtime_version "${FLAGS[accelerator_type]}")
fi
validate runtime_version '^[A-Za-z0-9][-A-Za-z0-9._]*$' 'a runtime version such as tpu-ubuntu2204-base'
validate valid_until_duration '^([0-9]+[smhd])+$' 'a duration such as 6h, 2d or 1h30m'
if [[ -n ${FLAGS[spot]:-} && -n ${FLAGS[reserved]:-} ]]; then
  die "--spot and --reserved exclude each other: pick one capacity type"
fi

location_flags
name=${FLAGS[name]}
# --autocheckpoint-enabled exists in gcloud's alpha track only.
command=(gcloud)
if [[ -n ${FLAGS[autocheckpoint]:-} ]]; then command+=(alpha); fi
command+=(compute tpus queued-resources create "$name")
if ((FLAGS[num_slices] > 1)); then
  command+=("--node-count=${FLAGS[num_slices]}" "--node-prefix=$name")
else
  command+=("--node-id=$name")
fi
command+=("${LOCATION[@]}" "--accelerator-type=${FLAGS[accelerator_type]}"
  "--runtime-version=${FLAGS[runtime_version]}")
if [[ -n ${FLAGS[spot]:-} ]]; then command+=(--spot); fi
if [[ -n ${FLAGS[reserved]:-} ]]; then command+=(--reserved); fi
if [[ -n ${FLAGS[internal_ip]:-} ]]; then command+=(--internal-ips); fi
if [[ -n ${FLAGS[valid_until_duration]:-} ]]; then
  command+=("--valid-until-duration=${FLAGS[valid_until_duration]}")
fi
if [[ -n ${FLAGS[autocheckpoint]:-} ]]; then command+=(--autocheckpoint-enabled); fi
run "${command[@]}"
