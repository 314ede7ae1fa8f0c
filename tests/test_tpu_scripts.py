"""tpu_scripts: the gcloud commands they print and run, argument checks, and quoting.

A fake `gcloud` first on PATH records every call, so no test can reach Google Cloud.
"""

import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parent.parent / "tpu_scripts"
NODE = ["--name=flan-xxl", "--zone=us-central2-b"]
SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "flan-xxl", "--zone=us-central2-b"]


@pytest.fixture
def fake_gcloud(tmp_path):
    """(env, calls file): a PATH whose gcloud writes its arguments, one per line, to the file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcloud_calls"
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" >> {shlex.quote(str(calls))}\n')
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    return env, calls


def run(script, args, env, cwd=None):
    return subprocess.run(
        [str(SCRIPTS / script), *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def dry_run(script, args, fake_gcloud):
    env, calls = fake_gcloud
    result = run(script, [*args, "--dry-run"], env)
    assert result.returncode == 0, result.stderr
    assert not calls.exists(), "--dry-run must not call gcloud"
    return [shlex.split(line) for line in result.stdout.splitlines()]


def remote_words(command):
    """The words the worker's shell sees in an ssh command's --command."""
    (remote,) = [a[len("--command=") :] for a in command if a.startswith("--command=")]
    return remote


def test_create_requests_a_queued_resource(fake_gcloud):
    args = [*NODE, "--accelerator-type=v4-64", "--spot", "--project=my-project"]
    assert dry_run("create.sh", args, fake_gcloud) == [
        ["gcloud", "compute", "tpus", "queued-resources", "create", "flan-xxl",
         "--node-id=flan-xxl", "--zone=us-central2-b", "--project=my-project",
         "--accelerator-type=v4-64", "--runtime-version=tpu-ubuntu2204-base", "--spot"],
    ]  # fmt: skip
    reserved = dry_run("create.sh", [*NODE, "--accelerator-type", "v4-1024", "--reserved"],
                       fake_gcloud)  # fmt: skip
    assert reserved[0][-3:] == [
        "--accelerator-type=v4-1024",
        "--runtime-version=tpu-ubuntu2204-base",
        "--reserved",
    ]


def test_setup_checks_out_the_commit_on_every_worker(fake_gcloud):
    repo = "https://github.com/example/flan_jax.git"
    (command,) = dry_run("setup.sh", [*NODE, f"--repo={repo}", "--commit=0123abcd"], fake_gcloud)
    assert command[:8] == [*SSH, "--worker=all"]
    steps = [shlex.split(step) for step in remote_words(command).split("; ")]
    assert ["git", "clone", "--quiet", repo, "flan_jax"] in [s[-5:] for s in steps]
    assert ["git", "checkout", "--quiet", "--detach", "0123abcd"] in steps
    assert ["python3.11", "-m", "venv", ".venv"] in steps
    assert [".venv/bin/python", "-m", "pip", "install", "--quiet", "-c", "constraints.txt",
            "-e", ".[tpu]"] in steps  # fmt: skip
    assert not any("gcsfuse" in step for step in steps)
    args = [*NODE, f"--repo={repo}", "--commit=0123abcd", "--bucket=my-runs"]
    (command,) = dry_run("setup.sh", args, fake_gcloud)
    steps = [shlex.split(step) for step in remote_words(command).split("; ")]
    assert ["mountpoint", "-q", "~/bucket", "||", "gcsfuse", "--implicit-dirs", "my-runs",
            "~/bucket"] in steps  # fmt: skip


def test_launch_passes_gin_bindings_through_both_shells_intact(fake_gcloud):
    model_dir = "MODEL_DIR='gs://bucket/run one'"
    args = [*NODE, "--gin-file=gin/runs/flan_t5/xxl.gin", f"--gin={model_dir}",
            "--gin", "MIXTURE_OR_TASK_NAME='flan_demo'"]  # fmt: skip
    (command,) = dry_run("launch.sh", args, fake_gcloud)
    assert command[:8] == [*SSH, "--worker=all"]
    words = shlex.split(remote_words(command))
    assert words[:3] == ["cd", "flan_jax", "&&"]
    assert words[3:11] == [
        "nohup", ".venv/bin/python", "-m", "flan_jax.train", "--coordinator_address=auto",
        "--gin_file=gin/runs/flan_t5/xxl.gin", f"--gin.{model_dir}",
        "--gin.MIXTURE_OR_TASK_NAME='flan_demo'",
    ]  # fmt: skip
    assert words[11:] == [">", "~/flan_jax_run.log", "2>&1", "<", "/dev/null", "&",
                          "echo", "$!", ">", "~/flan_jax_run.pid"]  # fmt: skip


def test_logs_stop_and_delete(fake_gcloud):
    (logs,) = dry_run("logs.sh", [*NODE, "--worker=3"], fake_gcloud)
    assert logs == [*SSH, "--worker=3", "--command=tail -n +1 -F ~/flan_jax_run.log"]
    (stop,) = dry_run("stop.sh", NODE, fake_gcloud)
    assert stop[:8] == [*SSH, "--worker=all"]
    assert shlex.split(remote_words(stop))[:2] == ["kill", "-TERM"]
    (delete,) = dry_run("delete.sh", NODE, fake_gcloud)
    assert delete == ["gcloud", "compute", "tpus", "queued-resources", "delete", "flan-xxl",
                      "--zone=us-central2-b", "--force", "--quiet"]  # fmt: skip


def test_without_dry_run_gcloud_gets_exactly_the_printed_words(fake_gcloud):
    env, calls = fake_gcloud
    args = [*NODE, "--gin-file=gin/runs/demo.gin", "--gin=MODEL_DIR='/tmp/a b'"]
    result = run("launch.sh", args, env)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == shlex.split(result.stdout)[1:]


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
        ("launch.sh", [*NODE, "--gin-file=../x.gin;touch {marker}"], "is not a relative path"),
        ("logs.sh", [*NODE, "--worker=0;touch {marker}"], "is not a worker number"),
        ("delete.sh", [*NODE, "--force"], "unknown flag --force"),
        ("stop.sh", ["--zone=us-central2-b"], "--name is required"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_and_never_run(script, args, message, fake_gcloud, tmp_path):
    env, calls = fake_gcloud
    marker = tmp_path / "marker"
    args = [a.format(marker=marker) for a in args]
    for extra in ([], ["--dry-run"]):
        result = run(script, [*args, *extra], env, cwd=tmp_path)
        assert result.returncode == 2
        assert message in result.stderr
        assert result.stdout == ""
    assert not calls.exists() and not marker.exists()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean():
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    result = subprocess.run(
        ["shellcheck", "-x", *scripts], cwd=SCRIPTS, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
