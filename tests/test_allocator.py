"""flan_jax.allocator: in a fresh process, XLA's per-call temporaries are faulted in as huge
pages; the opt-out, a user's own tunables, non-CPU backends, kernels without huge pages and
other libcs leave glibc as it was."""

import ctypes
import json
import os
import subprocess
import sys

import pytest

from flan_jax import allocator

# A fresh process: configure() first (it re-executes the process once), then a jitted call
# whose 256 MiB temporaries XLA's CPU runtime mallocs on every execution. Under glibc's
# defaults every call maps them anew and page-faults them in 4 KiB at a time; with huge pages
# 2 MiB at a time.
PROBE = """
import json, os, resource, sys
from flan_jax import allocator
print("started", os.getpid(), file=sys.stderr)
applied = allocator.configure()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(x * 2.0).sum())
x = jnp.ones(64 << 20, jnp.float32)
f(x).block_until_ready()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults, "pid": os.getpid(),
                  "tunables": os.environ.get("GLIBC_TUNABLES")}))
"""
PAGES_OF_THE_TEMPORARY = (256 << 20) // 4096


@pytest.fixture(autouse=True)
def _no_reexec_of_pytest(monkeypatch):
    """The in-process cases must return before re-executing: that would restart pytest."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(allocator.ENV_VAR, raising=False)

    def refuse(*args):
        raise AssertionError(f"configure() would re-execute this process: {args}")

    monkeypatch.setattr(os, "execv", refuse)


def _probe(**env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in (allocator.ENV_VAR, "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "starts": out.stderr.count(f"started {result['pid']}")}


@pytest.mark.skipif(
    not allocator._kernel_has_huge_pages(), reason="this kernel has transparent huge pages off"
)
def test_xla_temporaries_are_faulted_in_as_huge_pages_once_configured():
    tuned = _probe(GLIBC_TUNABLES="glibc.pthread.rseq=1")
    assert tuned["applied"] is True
    assert tuned["starts"] == 2, "one re-exec in place, same pid"
    assert tuned["tunables"] == "glibc.pthread.rseq=1:" + allocator.TUNABLE
    assert max(tuned["faults"]) < PAGES_OF_THE_TEMPORARY / 10, tuned


def test_opt_out_keeps_glibc_defaults_that_fault_the_temporary_in_every_call():
    default = _probe(**{allocator.ENV_VAR: "default"})
    assert default["applied"] is False and default["starts"] == 1
    assert min(default["faults"]) > PAGES_OF_THE_TEMPORARY / 2, default


def test_users_own_malloc_tunables_are_left_alone(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert allocator.configure() is False


@pytest.mark.parametrize("platforms", ["tpu", "cuda", "tpu,cpu"])
def test_no_op_when_jax_platforms_names_an_accelerator_first(monkeypatch, platforms):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert allocator.configure() is False


def test_no_op_on_a_host_with_accelerator_devices(monkeypatch, tmp_path):
    (tmp_path / "accel0").touch()
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(allocator, "ACCELERATOR_DEVICES", (str(tmp_path / "accel*"),))
    assert allocator.configure() is False


def test_no_op_off_glibc(monkeypatch):
    class NotGlibc:  # musl or macOS: a libc without gnu_get_libc_version
        pass

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: NotGlibc())
    assert allocator.configure() is False


def test_no_op_on_glibc_older_than_the_tunable(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(allocator, "GLIBC_WITH_TUNABLE", (99, 0))
    assert allocator.configure() is False


@pytest.mark.parametrize("setting", ["always madvise [never]", None])
def test_no_op_where_the_kernel_has_huge_pages_off(monkeypatch, tmp_path, setting):
    path = tmp_path / "enabled"
    if setting is not None:
        path.write_text(setting + "\n")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(allocator, "THP_SETTING", str(path))
    assert allocator.configure() is False


def test_unknown_choice_names_the_value_and_the_choices(monkeypatch):
    monkeypatch.setenv(allocator.ENV_VAR, "jemalloc")
    with pytest.raises(ValueError, match=r"FLAN_JAX_MALLOC='jemalloc'.*'tuned', 'default'"):
        allocator.configure()
