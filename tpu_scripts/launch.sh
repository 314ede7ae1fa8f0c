#!/usr/bin/env bash
# Starts one gin run on every worker of a slice, in the background; each worker's processes
# find each other through jax.distributed.initialize() and the TPU VM's metadata.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/launch.sh --name=NAME --zone=ZONE --gin-file=FILE [--gin=NAME=VALUE ...]
         [--project=PROJECT] [--dry-run]

  --gin-file  a run file, e.g. gin/runs/flan_t5/xxl.gin (relative to the checkout)
  --gin       a gin binding, repeatable, e.g. --gin=MODEL_DIR="'gs://bucket/run'" (gs:// paths
              are read and written directly; every worker must see the same MODEL_DIR)
  --dry-run   print the gcloud command without running it
Logs: tpu_scripts/logs.sh; stop (checkpoint and exit): tpu_scripts/stop.sh.
USAGE
}

parse_flags "name zone project gin_file gin" "" "$@"
validate_node_flags
require gin_file
validate gin_file '^[A-Za-z0-9_][-A-Za-z0-9_./]*\.gin$' 'a relative path to a .gin file'
binding_pattern='^[A-Za-z_][A-Za-z0-9_./]*=.+$'
train=(.venv/bin/python -m flan_jax.train --coordinator_address=auto "--gin_file=${FLAGS[gin_file]}")
for binding in "${GIN_BINDINGS[@]}"; do
  [[ $binding =~ $binding_pattern ]] || die "--gin='$binding' is not NAME=VALUE"
  train+=("--gin.$binding")
done

remote="cd $REMOTE_CHECKOUT && nohup $(quote "${train[@]}") > ~/$REMOTE_LOG 2>&1 < /dev/null & echo \$! > ~/$REMOTE_PID"
ssh_workers all "$remote"
