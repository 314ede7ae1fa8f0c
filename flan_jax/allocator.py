"""glibc malloc tuned for XLA's CPU runtime, applied by the entry points before jax starts.

XLA's CPU runtime mallocs each step's temporaries afresh (4.4 GB for the T5-small benchmark
step) from a worker thread. glibc serves a request that large from a thread's own arena by a
fresh mmap and unmaps it on free, so the kernel zero-fills every page again each step:
1.3 M page faults, a T5-small train step of 4.5 s instead of 3.0 s (benchmarks/PROFILE.md).
One arena, no mmap'd chunks and no trimming keep those pages mapped from one step to the next.

Stdlib only: it runs before numpy, TensorFlow or jax start their threads. It changes nothing
off glibc, off the CPU backend (TPU and GPU hosts keep glibc's defaults), when the user set
glibc's malloc tunables themselves, or with FLAN_JAX_MALLOC=default. The cost: the heap
never shrinks, so a process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import glob
import os

ENV_VAR = "FLAN_JAX_MALLOC"
CHOICES = ("tuned", "default")
# <malloc.h> parameters for mallopt(3).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# An accelerator's device files: jax would pick that backend when JAX_PLATFORMS is unset.
ACCELERATOR_DEVICES = ("/dev/nvidiactl", "/dev/kfd", "/dev/accel*", "/dev/vfio/[0-9]*")


def configure() -> bool:
    """Tunes glibc malloc for the XLA CPU backend; True when it did.

    Call it first thing in an entry point, before jax creates its CPU client: a thread
    keeps the arena of its first malloc, and XLA's threads must find only the main one.
    """
    choice = os.environ.get(ENV_VAR, "tuned")
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {CHOICES} ('default' keeps "
                         "glibc's malloc settings)")  # fmt: skip
    if choice == "default" or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if not runs_on_cpu():
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS: not glibc's arenas
        return False
    # -1: no trimming at all (mallopt(3)); mallopt returns 1 on success.
    settings = {M_ARENA_MAX: 1, M_MMAP_MAX: 0, M_TRIM_THRESHOLD: -1}
    return all(libc.mallopt(param, value) == 1 for param, value in settings.items())


def runs_on_cpu() -> bool:
    """Whether jax's default backend will be the CPU, judged without importing jax."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)
