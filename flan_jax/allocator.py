"""glibc malloc set up for XLA's CPU runtime, applied by the entry points before jax starts.

XLA's CPU runtime mallocs each step's temporaries afresh (4.4 GB for the T5-small benchmark
step). glibc serves requests that large by a fresh mmap and unmaps them on free, so the
kernel faults in and zero-fills every 4 KiB page again each step: 1.16 M page faults a step.
With glibc's `hugetlb=1` tunable those mappings are backed by 2 MiB transparent huge pages,
which the kernel faults in 512 times more coarsely (3,000 faults a step), and memory is still
returned on free. Measured on the T5-small benchmark step (same machine, one run): 6.70 s
under glibc's defaults, 5.30 s with huge pages, both at 6.2 GB peak.

(One arena with no mmap'd chunks, tried before, kept the pages mapped instead: 5.10 s, but
XLA's large blocks then share the heap with small allocations that split them, so how much
the heap grew depended on the run: 10 GB peak for that step, and 3-6 GB for a 0.5 GB working
set, sometimes faulting every step anyway.)

glibc reads tunables only when a process starts, so configure() sets GLIBC_TUNABLES and
re-executes the process in place (same pid, same argv) before anything else has run. Stdlib
only. It changes nothing off glibc, off the CPU backend (TPU and GPU hosts keep glibc's
defaults), where the kernel has huge pages off, when the user set glibc's malloc tunables
themselves, or with FLAN_JAX_MALLOC=default. Child processes inherit the setting.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys

ENV_VAR = "FLAN_JAX_MALLOC"
CHOICES = ("tuned", "default")
TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: madvise(MADV_HUGEPAGE) on what it maps
GLIBC_WITH_TUNABLE = (2, 35)
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"  # "always [madvise] never"
# An accelerator's device files: jax would pick that backend when JAX_PLATFORMS is unset.
ACCELERATOR_DEVICES = ("/dev/nvidiactl", "/dev/kfd", "/dev/accel*", "/dev/vfio/[0-9]*")


def configure() -> bool:
    """Backs glibc's large mappings with huge pages for the XLA CPU backend; True when the
    setting is in effect. It does so by re-executing the process: call it first thing in an
    entry point, before any other work (what ran before runs again)."""
    choice = os.environ.get(ENV_VAR, "tuned")
    if choice not in CHOICES:
        raise ValueError(f"{ENV_VAR}={choice!r}: expected one of {CHOICES} ('default' keeps "
                         "glibc's malloc settings)")  # fmt: skip
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables.split(":"):
        return True  # set by us before the re-exec, or by the user
    if choice == "default" or "glibc.malloc." in tunables:
        return False
    if not (runs_on_cpu() and _glibc_has_the_tunable() and _kernel_has_huge_pages()):
        return False
    if not (sys.executable and sys.orig_argv):  # an embedded interpreter: nothing to re-run
        return False
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)  # does not return


def runs_on_cpu() -> bool:
    """Whether jax's default backend will be the CPU, judged without importing jax."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not any(glob.glob(pattern) for pattern in ACCELERATOR_DEVICES)


def _glibc_has_the_tunable() -> bool:
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # musl, macOS: not glibc
        return False
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    version = libc.gnu_get_libc_version().decode()
    return tuple(int(part) for part in version.split(".")[:2]) >= GLIBC_WITH_TUNABLE


def _kernel_has_huge_pages() -> bool:
    try:
        with open(THP_SETTING) as f:
            return "[never]" not in f.read()
    except OSError:  # not Linux, or no THP support compiled in
        return False
