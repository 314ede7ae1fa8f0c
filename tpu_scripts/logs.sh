#!/usr/bin/env bash
# Streams a worker's training log (worker 0 by default, which prints progress and eval).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/logs.sh --name=NAME --zone=ZONE [--worker=N|all] [--project=PROJECT] [--dry-run]
USAGE
}

parse_flags "name zone project worker" "" "$@"
validate_node_flags
FLAGS[worker]=${FLAGS[worker]:-0}
validate worker '^(all|[0-9]+)$' 'a worker number or all'
ssh_workers "${FLAGS[worker]}" "tail -n +1 -F ~/$REMOTE_LOG"
