#!/usr/bin/env bash
# Installs flan_jax at one commit on every worker of every slice: clone, checkout, venv, pip.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/setup.sh --name=NAME --zone=ZONE --repo=URL --commit=SHA
         [--bucket=BUCKET] [--python=python3.11] [--apt-lock-timeout=SECONDS]
         [--poll-interval=SECONDS] [--internal-ip] [--project=PROJECT] [--dry-run]

  --repo     git URL of flan_jax (https://... or git@host:path)
  --commit   the commit (7 to 40 hex digits) every worker checks out
  --bucket   optional: also mount this GCS bucket with gcsfuse at ~/bucket on every worker.
             Not needed for runs: flan_jax reads and writes gs://BUCKET/... paths directly
             (MODEL_DIR, checkpoints, CACHE_DIR); the mount is for browsing files
  --python   interpreter for the venv; installed with apt if missing (default python3.11)
  --apt-lock-timeout  how long apt waits for the package lock, which a freshly booted
             worker's unattended upgrades hold for a while (default 600)
  --poll-interval  seconds between two looks at that lock (default 5)
  --internal-ip  ssh to the workers' internal addresses (from the same network)
  --dry-run  print the gcloud command without running it
USAGE
}

parse_flags "name zone project repo commit python bucket apt_lock_timeout poll_interval" "internal_ip" "$@"
validate_node_flags
require repo commit
validate repo '^(https://|git@)[-A-Za-z0-9._~/:@+]+$' 'a git URL (https://... or git@host:path)'
validate commit '^[0-9a-f]{7,40}$' 'a commit hash (7 to 40 lowercase hex digits)'
FLAGS[python]=${FLAGS[python]:-python3.11}
validate python '^python3(\.[0-9]+)?$' 'a python3 interpreter name such as python3.11'
validate bucket '^[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]$' 'a bucket name (without gs://)'
FLAGS[apt_lock_timeout]=${FLAGS[apt_lock_timeout]:-600}
validate apt_lock_timeout '^[0-9]+$' 'a number of seconds'
FLAGS[poll_interval]=${FLAGS[poll_interval]:-5}
validate poll_interval '^[0-9]+$' 'a number of seconds'

python=${FLAGS[python]}
lock_timeout=${FLAGS[apt_lock_timeout]} interval=${FLAGS[poll_interval]}
polls=$((lock_timeout / (interval > 0 ? interval : 1) + 1))
# Waits (at most `polls` looks) until no process holds apt's or dpkg's locks; apt-get itself
# then waits for the dpkg lock too (DPkg::Lock::Timeout), should something take it in between.
wait_for_apt="for _ in \$(seq $polls); do sudo fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock >/dev/null 2>&1 || break; sleep $interval; done"
apt="sudo apt-get -o DPkg::Lock::Timeout=$lock_timeout"
remote=(
  "set -euo pipefail"
  "command -v $python >/dev/null || { $wait_for_apt && $apt update -qq && $apt install -y -qq $python $python-venv git; }"
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
  remote+=(
    "command -v gcsfuse >/dev/null || { curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && echo \"$gcsfuse_apt\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && $wait_for_apt && $apt update -qq && $apt install -y -qq gcsfuse; }"
    "mkdir -p ~/bucket"
    "mountpoint -q ~/bucket || gcsfuse --implicit-dirs $(quote "${FLAGS[bucket]}") ~/bucket"
  )
fi
ssh_workers all all "$(steps "${remote[@]}")"
