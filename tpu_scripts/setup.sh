#!/usr/bin/env bash
# Installs flan_jax at one commit on every worker of a slice: clone, checkout, venv, pip.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/setup.sh --name=NAME --zone=ZONE --repo=URL --commit=SHA
         [--bucket=BUCKET] [--python=python3.11] [--project=PROJECT] [--dry-run]

  --repo     git URL of flan_jax (https://... or git@host:path)
  --commit   the commit (7 to 40 hex digits) every worker checks out
  --bucket   optional: also mount this GCS bucket with gcsfuse at ~/bucket on every worker.
             Not needed for runs: flan_jax reads and writes gs://BUCKET/... paths directly
             (MODEL_DIR, checkpoints, CACHE_DIR); the mount is for browsing files
  --python   interpreter for the venv; installed with apt if missing (default python3.11)
  --dry-run  print the gcloud command without running it
USAGE
}

parse_flags "name zone project repo commit python bucket" "" "$@"
validate_node_flags
require repo commit
validate repo '^(https://|git@)[-A-Za-z0-9._~/:@+]+$' 'a git URL (https://... or git@host:path)'
validate commit '^[0-9a-f]{7,40}$' 'a commit hash (7 to 40 lowercase hex digits)'
FLAGS[python]=${FLAGS[python]:-python3.11}
validate python '^python3(\.[0-9]+)?$' 'a python3 interpreter name such as python3.11'
validate bucket '^[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]$' 'a bucket name (without gs://)'

python=${FLAGS[python]}
steps=(
  "set -euo pipefail"
  "command -v $python >/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq $python $python-venv git; }"
  "[ -d $REMOTE_CHECKOUT/.git ] || git clone --quiet $(quote "${FLAGS[repo]}") $REMOTE_CHECKOUT"
  "cd $REMOTE_CHECKOUT"
  "git fetch --quiet origin"
  "git checkout --quiet --detach $(quote "${FLAGS[commit]}")"
  "$python -m venv .venv"
  ".venv/bin/python -m pip install --quiet -c constraints.txt -e '.[tpu]'"
  "echo \"\$(hostname): flan_jax at \$(git rev-parse HEAD)\""
)
if [[ -n ${FLAGS[bucket]:-} ]]; then
  gcsfuse_apt="deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main"
  steps+=(
    "command -v gcsfuse >/dev/null || { curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && echo \"$gcsfuse_apt\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; }"
    "mkdir -p ~/bucket"
    "mountpoint -q ~/bucket || gcsfuse --implicit-dirs $(quote "${FLAGS[bucket]}") ~/bucket"
  )
fi
remote=$(printf '%s; ' "${steps[@]}")
ssh_workers all "${remote%; }"
