"""flan_jax.allocator: in a fresh process, XLA's per-call temporaries stop being mapped anew;
the opt-out, a user's own tunables and non-CPU backends leave glibc as it was."""

import ctypes
import json
import os
import subprocess
import sys

import pytest

from flan_jax import allocator

# A fresh process: configure() first, then a jitted call whose 256 MiB temporary XLA's CPU
# runtime mallocs on every execution, from a worker thread. Under glibc's defaults every call
# maps it anew: each call page-faults all of it in. Tuned, calls reuse the heap's pages (how
# often depends on where other allocations land, so the test asks for one call of six).
PROBE = """
import json, resource
from flan_jax import allocator
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
print(json.dumps({"applied": applied, "faults": faults}))
"""
PAGES_OF_THE_TEMPORARY = (256 << 20) // 4096


def _probe(**env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in (allocator.ENV_VAR, "GLIBC_TUNABLES")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_xla_temporaries_are_not_faulted_in_again_once_configured():
    tuned = _probe()
    assert tuned["applied"] is True
    assert min(tuned["faults"]) < PAGES_OF_THE_TEMPORARY / 10, tuned


def test_opt_out_keeps_glibc_defaults_that_fault_the_temporary_in_every_call():
    default = _probe(**{allocator.ENV_VAR: "default"})
    assert default["applied"] is False
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
        def mallopt(self, *args):
            raise AssertionError("mallopt called on a libc that is not glibc")

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: NotGlibc())
    assert allocator.configure() is False


def test_unknown_choice_names_the_value_and_the_choices(monkeypatch):
    monkeypatch.setenv(allocator.ENV_VAR, "jemalloc")
    with pytest.raises(ValueError, match=r"FLAN_JAX_MALLOC='jemalloc'.*'tuned', 'default'"):
        allocator.configure()
