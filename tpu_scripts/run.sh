#!/usr/bin/env bash
# Takes a run to its last step through preemptions: creates the queued resource if there is
# none, sets it up, launches, then watches it. A slice that is preempted (SUSPENDED: its VMs
# and disks are gone) is deleted, created again, set up and relaunched; a run that died on a
# live slice is relaunched. Every launch resumes from the newest checkpoint in the same gs://
# MODEL_DIR. The run is complete when the checkpoint of its last step is committed there
# (Orbax's commit_success.txt in MODEL_DIR/checkpoints/LAST_STEP): that, not a process exit
# status, is the test, since a run stopped by SIGTERM also exits 0.
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SCRIPTS=$(dirname "${BASH_SOURCE[0]}")

usage() {
  cat <<'USAGE'
usage: tpu_scripts/run.sh --name=NAME --zone=ZONE --accelerator-type=TYPE
         --repo=URL --commit=SHA --gin-file=FILE --model-dir=gs://BUCKET/PATH --last-step=N
         [--gin=NAME=VALUE ...] [--env=NAME=VALUE ...] [--num-slices=N]
         [--spot | --reserved] [--runtime-version=VERSION] [--valid-until-duration=DURATION]
         [--autocheckpoint] [--internal-ip] [--python=python3.11] [--bucket=BUCKET]
         [--delete-when-done] [--poll-interval=SECONDS] [--max-polls=N] [--max-restarts=N]
         [--project=PROJECT] [--dry-run]

  Slice flags as create.sh, --repo/--commit/--python/--bucket as setup.sh, --gin-file/--gin/
  --env/--num-slices as launch.sh.
  --model-dir     the run's MODEL_DIR (bound for the run; do not also pass --gin=MODEL_DIR=...)
  --last-step     the step the run ends at: its initial step + TRAIN_STEPS (the run prints
                  "starting at step S of N"; the Flan-T5-XXL preset from the LM-adapted
                  checkpoint ends at 1114000)
  --delete-when-done  delete the queued resource once the last step is saved
  --poll-interval seconds between two looks at the queued resource and the run (default 60)
  --max-polls     looks before giving up on one wait: for the slice to become ACTIVE, or for
                  the run to end (default 100000: 69 days at 60 s)
  --max-restarts  relaunches after a preemption or a dead run before giving up (default 20)
  --dry-run       print the commands of a first pass (check, create, set up, launch)
Ctrl-C stops watching only: the slice and the run go on (and keep billing).
USAGE
}

parse_flags "name zone project accelerator_type runtime_version num_slices valid_until_duration \
  repo commit python bucket gin_file gin env model_dir last_step poll_interval max_polls \
  max_restarts" "spot reserved internal_ip autocheckpoint delete_when_done" "$@"
validate_node_flags
require accelerator_type repo commit gin_file model_dir last_step
validate model_dir '^gs://[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9](/[-A-Za-z0-9_.=]+)*$' \
  'a gs:// URL such as gs://my-bucket/runs/flan-xxl (every worker must reach MODEL_DIR)'
validate last_step '^[1-9][0-9]*$' 'a step number'
FLAGS[poll_interval]=${FLAGS[poll_interval]:-60}
FLAGS[max_polls]=${FLAGS[max_polls]:-100000}
FLAGS[max_restarts]=${FLAGS[max_restarts]:-20}
validate poll_interval '^[0-9]+$' 'a number of seconds'
validate max_polls '^[1-9][0-9]*$' 'a number of polls (1 or more)'
validate max_restarts '^[0-9]+$' 'a number of restarts'
for binding in "${GIN_BINDINGS[@]}"; do
  [[ $binding != MODEL_DIR=* ]] || die "--gin='$binding': pass the run's directory as --model-dir"
done

# The flags each script takes, from this command's.
forward() {
  local key
  for key; do
    if [[ ${FLAGS[$key]:-} == 1 && " spot reserved internal_ip autocheckpoint " == *" $key "* ]]; then
      printf -- '--%s\n' "${key//_/-}"
    elif [[ -n ${FLAGS[$key]:-} ]]; then
      printf -- '--%s=%s\n' "${key//_/-}" "${FLAGS[$key]}"
    fi
  done
}
mapfile -t node < <(forward name zone project)
mapfile -t reach < <(forward internal_ip)
mapfile -t create < <(forward accelerator_type runtime_version num_slices valid_until_duration \
  spot reserved internal_ip autocheckpoint)
mapfile -t setup < <(forward repo commit python bucket internal_ip)
mapfile -t launch < <(forward gin_file num_slices internal_ip)
for binding in "${GIN_BINDINGS[@]}"; do launch+=("--gin=$binding"); done
launch+=("--gin=MODEL_DIR='${FLAGS[model_dir]}'")
for variable in "${ENV_VARS[@]}"; do launch+=("--env=$variable"); done
create=("${node[@]}" "${create[@]}")
setup=("${node[@]}" "${setup[@]}")
# A relaunch frees the TPU of what the last run left (its other workers may still be waiting
# in a collective for the one that died).
launch=("${node[@]}" "${launch[@]}" --kill-existing)

location_flags
describe=(gcloud compute tpus queued-resources describe "${FLAGS[name]}" "${LOCATION[@]}"
  "--format=value(state.state)")
saved=(gcloud storage ls "${FLAGS[model_dir]}/checkpoints/${FLAGS[last_step]}/commit_success.txt")
alive="kill -0 \"\$(cat ~/$REMOTE_PID 2>/dev/null)\" 2>/dev/null || exit 3"

# Every argument is checked before anything is created.
"$SCRIPTS/create.sh" "${create[@]}" --dry-run >/dev/null
"$SCRIPTS/setup.sh" "${setup[@]}" --dry-run >/dev/null
"$SCRIPTS/launch.sh" "${launch[@]}" --dry-run >/dev/null
if ((DRY_RUN)); then
  run "${saved[@]}"
  run "${describe[@]}"
  "$SCRIPTS/create.sh" "${create[@]}" --dry-run
  "$SCRIPTS/setup.sh" "${setup[@]}" --dry-run
  "$SCRIPTS/launch.sh" "${launch[@]}" --dry-run
  ssh_workers all all "$alive"
  if [[ -n ${FLAGS[delete_when_done]:-} ]]; then "$SCRIPTS/delete.sh" "${node[@]}" --dry-run; fi
  exit 0
fi

say() {
  printf 'run.sh %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"
}
still_billing() {
  say "stopped watching; the slice is still billing while it exists:" \
    "$(quote "$SCRIPTS/delete.sh" "${node[@]}")"
}
gcloud_errors=$(mktemp)
# Any way out but completion leaves the slice up: say so, with the command that deletes it.
trap 'status=$?; rm -f "$gcloud_errors"; if ((status)); then still_billing; fi' EXIT
trap 'exit 130' INT TERM

# The queued resource's state (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, ...),
# ABSENT when there is none, UNKNOWN when gcloud could not say (its error goes to stderr).
slice_state() {
  local state
  if state=$("${describe[@]}" 2>"$gcloud_errors"); then
    printf '%s\n' "${state:-UNKNOWN}"
  elif grep -q NOT_FOUND "$gcloud_errors"; then
    echo ABSENT
  else
    cat "$gcloud_errors" >&2
    echo UNKNOWN
  fi
}

# The run on the workers: alive (on every worker), dead (gone on one at least) or unreachable.
run_state() {
  local status=0
  ssh_workers all all "$alive" >/dev/null 2>"$gcloud_errors" || status=$?
  case $status in
    0) echo alive ;;
    3) echo dead ;;
    *) cat "$gcloud_errors" >&2; echo unreachable ;;
  esac
}

last_step_saved() {
  "${saved[@]}" >/dev/null 2>&1
}

pause() {
  sleep "${FLAGS[poll_interval]}"
}

# Returns once the queued resource is ACTIVE, creating it if there is none and recreating it
# if it was preempted.
ensure_active() {
  local polls state
  for ((polls = 1; ; polls++)); do
    state=$(slice_state)
    case $state in
      ACTIVE) say "queued resource ${FLAGS[name]} is ACTIVE"; return 0 ;;
      ABSENT)
        say "no queued resource ${FLAGS[name]}: creating it"
        "$SCRIPTS/create.sh" "${create[@]}"
        ;;
      SUSPENDED)
        say "queued resource ${FLAGS[name]} is SUSPENDED (preempted; its VMs and disks are" \
          "gone): deleting and creating it again"
        "$SCRIPTS/delete.sh" "${node[@]}"
        "$SCRIPTS/create.sh" "${create[@]}"
        ;;
      FAILED)
        die "queued resource ${FLAGS[name]} is FAILED (not granted in time, or refused: see" \
          "$(quote "${describe[@]:0:6}" "${LOCATION[@]}")); delete it with $(quote "$SCRIPTS/delete.sh" "${node[@]}")"
        ;;
      *) say "queued resource ${FLAGS[name]} is $state: waiting" ;;
    esac
    ((polls < FLAGS[max_polls])) || die "queued resource ${FLAGS[name]} is still $state after" \
      "${FLAGS[max_polls]} polls; run this command again to keep waiting"
    pause
  done
}

# Watches until the slice stops being ACTIVE or the run is gone from a worker.
watch_run() {
  local polls state
  for ((polls = 1; polls <= FLAGS[max_polls]; polls++)); do
    pause
    state=$(slice_state)
    if [[ $state != ACTIVE && $state != UNKNOWN ]]; then
      say "queued resource ${FLAGS[name]} is $state: the slice was preempted or lost"
      return 0
    fi
    if [[ $state == ACTIVE && $(run_state) == dead ]]; then
      say "the run is gone from a worker; the last lines of worker 0's log:"
      "$SCRIPTS/logs.sh" "${node[@]}" "${reach[@]}" --lines=20 || true
      return 0
    fi
  done
  die "the run is still going after ${FLAGS[max_polls]} polls; run this command again to" \
    "keep watching"
}

for ((restarts = 0; ; restarts++)); do
  if last_step_saved; then break; fi
  if ((restarts > FLAGS[max_restarts])); then
    die "gave up after ${FLAGS[max_restarts]} relaunches (--max-restarts)"
  fi
  if ((restarts)); then
    say "relaunching ($restarts of at most ${FLAGS[max_restarts]}) from the newest checkpoint" \
      "in ${FLAGS[model_dir]}"
  fi
  ensure_active
  polls=0
  while state=$(run_state) && [[ $state == unreachable ]] && ((++polls < FLAGS[max_polls])); do
    pause
  done
  if [[ $state == alive ]]; then
    say "a run is alive on every worker: watching it"
  else
    "$SCRIPTS/setup.sh" "${setup[@]}"
    "$SCRIPTS/launch.sh" "${launch[@]}"
    say "launched; follow it with $(quote "$SCRIPTS/logs.sh" "${node[@]}" "${reach[@]}")"
  fi
  watch_run
done
say "step ${FLAGS[last_step]} is saved in ${FLAGS[model_dir]}: the run is complete"
if [[ -n ${FLAGS[delete_when_done]:-} ]]; then
  "$SCRIPTS/delete.sh" "${node[@]}"
fi
