#!/usr/bin/env bash
# Deletes the queued resource and its TPU slices (billing stops; the workers' disks are lost).
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/delete.sh --name=NAME --zone=ZONE [--project=PROJECT] [--dry-run]
USAGE
}

parse_flags "name zone project" "" "$@"
validate_node_flags
location_flags
run gcloud compute tpus queued-resources delete "${FLAGS[name]}" "${LOCATION[@]}" --force --quiet
