#!/usr/bin/env bash
# Stops the run on every worker with SIGTERM: flan_jax.train saves a checkpoint and exits 0.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/stop.sh --name=NAME --zone=ZONE [--project=PROJECT] [--dry-run]
USAGE
}

parse_flags "name zone project" "" "$@"
validate_node_flags
ssh_workers all "kill -TERM \"\$(cat ~/$REMOTE_PID)\" && rm ~/$REMOTE_PID"
