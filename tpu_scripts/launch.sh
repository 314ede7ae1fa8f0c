#!/usr/bin/env bash
# Starts one gin run on every worker of every slice, in the background; the processes find each
# other through jax.distributed.initialize() and the TPU VMs' metadata, which on a multi-slice
# queued resource also holds the MEGASCALE_* settings (slice count, slice id, coordinator)
# that JAX reads, so nothing here sets them.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
usage: tpu_scripts/launch.sh --name=NAME --zone=ZONE --gin-file=FILE [--gin=NAME=VALUE ...]
         [--env=NAME=VALUE ...] [--num-slices=N] [--kill-existing] [--internal-ip]
         [--project=PROJECT] [--dry-run]

  --gin-file  a run file, e.g. gin/runs/flan_t5/xxl.gin (relative to the checkout)
  --gin       a gin binding, repeatable, e.g. --gin=MODEL_DIR="'gs://bucket/run'" (gs:// paths
              are read and written directly; every worker must see the same MODEL_DIR)
  --env       an environment variable for the run, repeatable,
              e.g. --env=LIBTPU_INIT_ARGS='--xla_tpu_enable_latency_hiding_scheduler=true'
  --num-slices  the slices the queued resource holds (create.sh --num-slices): binds the gin
              macro NUM_SLICES, so the mesh's `replica` axis spans them
  --kill-existing  a worker whose TPU is held (a live run, or any process with the TPU open)
              refuses the launch; with this flag those processes are killed (SIGKILL: the
              run resumes from its last checkpoint) and a stale /tmp/libtpu_lockfile removed
  --internal-ip  ssh to the workers' internal addresses (from the same network)
  --dry-run   print the gcloud commands without running them
Logs: tpu_scripts/logs.sh; stop (checkpoint and exit): tpu_scripts/stop.sh.
USAGE
}

parse_flags "name zone project gin_file gin env num_slices" "kill_existing internal_ip" "$@"
validate_node_flags
validate_num_slices
require gin_file
validate gin_file '^[A-Za-z0-9_][-A-Za-z0-9_./]*\.gin$' 'a relative path to a .gin file'
binding_pattern='^[A-Za-z_][A-Za-z0-9_./]*=.+$'
env_pattern='^[A-Za-z_][A-Za-z0-9_]*=.*$'
train=()
if ((${#ENV_VARS[@]})); then train+=(env); fi
for variable in "${ENV_VARS[@]}"; do
  [[ $variable =~ $env_pattern ]] || die "--env='$variable' is not NAME=VALUE"
  train+=("$variable")
done
train+=(.venv/bin/python -m flan_jax.train --coordinator_address=auto
  "--gin_file=${FLAGS[gin_file]}")
for binding in "${GIN_BINDINGS[@]}"; do
  [[ $binding =~ $binding_pattern ]] || die "--gin='$binding' is not NAME=VALUE"
  train+=("--gin.$binding")
done
if ((FLAGS[num_slices] > 1)); then train+=("--gin.NUM_SLICES=${FLAGS[num_slices]}"); fi

# 1. Every worker checks that nothing holds its TPU (or, with --kill-existing, frees it), so
# that no worker starts while another refuses. A pid file whose process is gone is removed.
# The TPU's device files are /dev/accel* (v4, v5p) or /dev/vfio/* (v5e, v6e).
free=(
  "pid=\$(cat ~/$REMOTE_PID 2>/dev/null || true)"
  "if [ -n \"\$pid\" ] && ! kill -0 \"\$pid\" 2>/dev/null; then rm -f ~/$REMOTE_PID; pid=; fi"
  "held=\$({ echo \$pid; sudo lsof -t /dev/accel* /dev/vfio/[0-9]* /tmp/libtpu_lockfile 2>/dev/null; } | sort -u | xargs)"
)
if [[ -n ${FLAGS[kill_existing]:-} ]]; then
  free+=(
    "if [ -n \"\$held\" ]; then echo \"\$(hostname): killing \$held, which hold the TPU\"; sudo kill -9 \$held; for p in \$held; do timeout 60 tail --pid=\"\$p\" -f /dev/null; done; fi"
    "rm -f ~/$REMOTE_PID"
  )
else
  free+=("if [ -n \"\$held\" ]; then echo \"\$(hostname): the TPU is held by process(es) \$held (ps -fp \$held): stop that run (tpu_scripts/stop.sh) or pass --kill-existing\" >&2; exit 3; fi")
fi
free+=("sudo rm -f /tmp/libtpu_lockfile")

ssh_workers all all "$(steps "${free[@]}")"

# 2. Start: the pid file is claimed first (noclobber: a second launch cannot overwrite it),
# and each launch appends to the log.
start="cd $REMOTE_CHECKOUT && set -C && : > ~/$REMOTE_PID && { nohup $(quote "${train[@]}") >> ~/$REMOTE_LOG 2>&1 < /dev/null & echo \$! >| ~/$REMOTE_PID; }"
ssh_workers all all "$start"
