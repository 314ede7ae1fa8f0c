#!/usr/bin/env bash
# Streams a worker's training log (worker 0 of slice 0 by default, which prints progress and
# eval), or prints its last lines.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/logs.sh --name=NAME --zone=ZONE [--node=N|all] [--worker=N|all]
         [--lines=N] [--internal-ip] [--project=PROJECT] [--dry-run]

  --node    the slice (0 .. --num-slices - 1), default 0
  --worker  the worker within it, default 0
  --lines   print the log's last N lines and return, instead of following it
USAGE
}

parse_flags "name zone project node worker lines" "internal_ip" "$@"
validate_node_flags
FLAGS[node]=${FLAGS[node]:-0}
FLAGS[worker]=${FLAGS[worker]:-0}
validate node '^(all|[0-9]+)$' 'a node number or all'
validate worker '^(all|[0-9]+)$' 'a worker number or all'
validate lines '^[0-9]+$' 'a number of lines'
if [[ -n ${FLAGS[lines]:-} ]]; then
  ssh_workers "${FLAGS[node]}" "${FLAGS[worker]}" "tail -n ${FLAGS[lines]} ~/$REMOTE_LOG"
else
  ssh_workers "${FLAGS[node]}" "${FLAGS[worker]}" "tail -n +1 -F ~/$REMOTE_LOG"
fi
