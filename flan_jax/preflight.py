"""Read what a run's input needs once, before any work: its data, vocabularies and CACHE_DIR.

Training and the task cache both start by compiling or by starting Beam, and each task
reads its vocabulary and data on its own: an unreachable vocabulary then fails thousands of
tasks one by one (gcsfs retries each read for ~50 s), or a run compiles for minutes before
its first batch finds no data. `check_inputs` asks for each of them once and raises one
`InputsUnreadable` naming everything that could not be read and how to point at a copy.

A gs:// read is given up at the first failed attempt (gcsfs logs it before retrying) or
after DEADLINE_S; a read that gcsfs would retry after a refused DNS lookup or connection is
not waited for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import seqio

from flan_jax import data, paths

DEADLINE_S = 60.0
# The environment variable that names the Flan vocabulary (tasks.vocab.FLAN_VOCAB_ENV).
VOCAB_ENV = "FLAN_JAX_VOCAB"
_RETRY_MARK = "retrying after exception"


class InputsUnreadable(RuntimeError):
    """A run's data, vocabulary or CACHE_DIR could not be read."""


def check_inputs(
    mixture_or_task_name: str, cache_dir: str | None = None, deadline_s: float = DEADLINE_S
) -> list[seqio.Task]:
    """The mixture's subtasks, once its data (a mixture's own `check_inputs`, e.g. the
    released collection's directory), every vocabulary file of its tasks and `cache_dir`
    (when given: reachable; absent is fine) have been read; else one InputsUnreadable."""
    mixture = data.get_mixture_or_task(mixture_or_task_name)
    problems, tasks = [], []
    try:
        getattr(mixture, "check_inputs", lambda: None)()
        tasks = seqio.get_subtasks(mixture)
    except Exception as e:
        problems.append(f"the data of {mixture_or_task_name!r}: {e}")
    for path, task_name in vocabulary_files(tasks).items():
        error = read_error(
            lambda path=path: paths.path(path, "vocabulary").read_bytes(),
            deadline_s,
            remote=not paths.is_local(path),
        )
        if error:
            problems.append(
                f"the vocabulary {path} (of {task_name} and the other tasks that use it): "
                f"{error}. Point ${VOCAB_ENV} at a local copy of that SentencePiece model (a "
                "Hugging Face Flan-T5 directory's spiece.model is T5's), or make it readable."
            )
    if cache_dir is not None:
        error = read_error(
            lambda: paths.path(cache_dir, "CACHE_DIR").exists(),
            deadline_s,
            remote=not paths.is_local(cache_dir),
        )
        if error:
            problems.append(
                f"CACHE_DIR {cache_dir}: {error}. Give a reachable local or gs:// path."
            )
    if problems:
        raise InputsUnreadable(
            "Stopped before any work: could not read\n" + "\n".join(f"- {p}" for p in problems)
        )
    return tasks


def vocabulary_files(tasks: Sequence[seqio.Task]) -> dict[str, str]:
    """SentencePiece model file -> the first task that uses it."""
    files = {}
    for task in tasks:
        for feature in task.output_features.values():
            path = getattr(feature.vocabulary, "sentencepiece_model_file", None)
            if path:
                files.setdefault(path, task.name)
    return files


# gcsfs's first failed attempt in this process: its retries go on in the background, and
# their log lines would answer a later check, so later gs:// reads are not tried.
_gcs_failure: list[str] = []


def read_error(read: Callable[[], object], deadline_s: float, remote: bool) -> str | None:
    """None if `read()` returns; else why not: its exception, or for a `remote` (gs://) read
    gcsfs's first failed attempt (not waiting for its retries) or the deadline passing."""
    if not remote:
        try:
            read()
            return None
        except Exception as e:
            return f"{type(e).__name__}: {e}"
    if _gcs_failure:
        return f"not tried: gs:// failed earlier in this process ({_gcs_failure[0]})"
    outcome: list[str | None] = []
    done = threading.Event()

    def attempt():
        try:
            read()
            outcome.append(None)
        except Exception as e:
            outcome.append(f"{type(e).__name__}: {e}")
        done.set()

    class FirstFailure(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if _RETRY_MARK in message:
                failure = message.split(_RETRY_MARK, 1)[1].lstrip(": ")
                _gcs_failure.append(failure)
                outcome.append(f"{failure} (gcsfs would retry for about a minute)")
                done.set()

    gcsfs_log = logging.getLogger("gcsfs")
    handler, level, propagate = FirstFailure(logging.DEBUG), gcsfs_log.level, gcsfs_log.propagate
    gcsfs_log.addHandler(handler)
    gcsfs_log.setLevel(logging.DEBUG)
    gcsfs_log.propagate = False  # its debug lines are for this check, not the run's log
    try:
        # A daemon thread: a read still retrying cannot hold the process at exit.
        threading.Thread(target=attempt, daemon=True).start()
        if not done.wait(deadline_s):
            _gcs_failure.append(f"no answer within {deadline_s:.0f} s")
            return _gcs_failure[-1]
    finally:
        gcsfs_log.removeHandler(handler)
        gcsfs_log.setLevel(level)
        gcsfs_log.propagate = propagate
    return outcome[0]
