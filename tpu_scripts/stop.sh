#!/usr/bin/env bash
# Stops the run on every worker of every slice with SIGTERM: flan_jax.train saves a checkpoint
# and exits 0.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/stop.sh --name=NAME --zone=ZONE [--internal-ip] [--project=PROJECT] [--dry-run]
USAGE
}

parse_flags "name zone project" "internal_ip" "$@"
validate_node_flags
ssh_workers all all "kill -TERM \"\$(cat ~/$REMOTE_PID)\" && rm ~/$REMOTE_PID"
