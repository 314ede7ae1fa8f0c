"""Checkpoint integrity at O(shard) cost: a restore proves it reads the bytes that were saved.

Three parts. Every array chunk carries a CRC32C that TensorStore checks as it decodes the
chunk (zarr v3's `crc32c` codec, which `add_chunk_checksums` appends to Orbax's chunk codec
chain); OCDBT's manifests and b-tree nodes carry their own. What no chunk checksum covers —
Orbax's small metadata files, the JSON `data` item, and whether a data file is still whole —
is recorded by the primary host in `state/flan_jax_integrity.json` when Orbax finalizes the
`state` item (so it is committed with the step's atomic rename): SHA-256 of every file outside
OCDBT's data directories (`d/`, whose contents the chunk and node checksums cover), the size
of every file, and a SHA-256 of the data item's contents; `verify` checks it with stat calls
and a few KiB of hashing before any array is read. And the processes agree on what they read
(`agree_on_read`), so one corrupt chunk makes every process refuse the same step.

Paths are `etils.epath` paths, so the record is listed, read and written on gs:// as on local
disk.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

from flan_jax import paths

# Inside the `state` item, written when Orbax finalizes it.
RECORD_FILE = "flan_jax_integrity.json"
_OCDBT_DATA_DIR = "d"  # TensorStore OCDBT's data files; chunk and node CRC32Cs cover them
# TensorStore's status codes for bytes that are missing, short or fail their checksum.
_DATA_ERRORS = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND")
# TensorStore checks a chunk's CRC32C at the end of its stream, after zstd has read it: a
# flipped byte in a compressed frame's header fails in zstd first (FAILED_PRECONDITION).
_DECOMPRESSION_FAILED = "ZSTD_decompressStream() failed"
# Chunk compression: Orbax's zarr v2 level. Its zarr v3 builder picks 3, which costs more
# time per byte and saved nothing on a T5-large state (2.704 GiB at either level).
ZSTD_LEVEL = 1
# The Orbax whose internal write-spec builder add_chunk_checksums wraps (constraints.txt pins
# it; tests/reliability/test_checkpoint_integrity.py fails when that builder changes).
ORBAX_VERSION = "0.12.8"


class CorruptCheckpointError(RuntimeError):
    """A step whose files do not match what was recorded (or checksummed) when it was saved."""

    def __init__(self, step: int, path: str | os.PathLike, problem: str):
        self.step, self.path, self.problem = step, path, problem
        super().__init__(
            f"checkpoint step {step} is corrupt: {path}: {problem}. Nothing was loaded from it. "
            "Set --gin.CHECKPOINT_FALLBACK=True to resume from the newest intact earlier step "
            "(the corrupt one is moved aside), or delete that step directory."
        )


def add_chunk_checksums() -> None:
    """Makes Orbax's zarr v3 array writes, in this process, give every chunk a CRC32C and
    compress it at ZSTD_LEVEL; calling it again does nothing. Orbax has no option for the
    chunk codec chain (its own chain checksums only the shard index), so this wraps its
    internal `build_array_write_spec`; readers need nothing (the codecs are in each array's
    zarr.json)."""
    build = tensorstore_utils.build_array_write_spec
    if not getattr(build, "adds_chunk_checksums", False):
        tensorstore_utils.build_array_write_spec = _with_chunk_checksums(build)


def _with_chunk_checksums(build):
    @functools.wraps(build)
    def build_with_chunk_checksums(*args, **kwargs):
        spec = build(*args, **kwargs)
        tspec = spec.json
        while tspec.get("driver") == "cast":
            tspec = tspec["base"]
        if tspec.get("driver") != "zarr3":
            return spec
        codecs = tspec.get("metadata", {}).get("codecs") or [{}]
        if codecs[0].get("name") != "sharding_indexed":
            raise RuntimeError(
                f"Orbax {ocp.__version__} writes zarr v3 arrays without the sharding_indexed "
                f"codec that flan_jax adds chunk CRC32Cs to (codecs: {codecs}); install "
                f"orbax-checkpoint=={ORBAX_VERSION} (pip install -c constraints.txt -e .)"
            )
        chunk_codecs = codecs[0]["configuration"]["codecs"]
        for codec in chunk_codecs:
            if codec.get("name") == "zstd":
                codec["configuration"] = {"level": ZSTD_LEVEL}
        if {"name": "crc32c"} not in chunk_codecs:
            chunk_codecs.append({"name": "crc32c"})
        return spec

    build_with_chunk_checksums.adds_chunk_checksums = True
    return build_with_chunk_checksums


def write_record(state_dir: str | os.PathLike, data_digest: str | None) -> None:
    """Records, inside the `state` item, the size of every file and the SHA-256 of every
    file outside OCDBT's data directories (a few KiB in all, whatever the model size), and
    `data_digest`, the `json_digest` of the step's data item."""
    state_dir = epath.Path(state_dir)
    files = {}
    for relative, size in files_under(state_dir).items():
        if relative == RECORD_FILE:  # an earlier record, if finalizing ran again
            continue
        files[relative] = {"bytes": size}
        if _OCDBT_DATA_DIR not in relative.split("/")[:-1]:
            files[relative]["sha256"] = _sha256(state_dir / relative)
    record = {"chunk_checksum": "crc32c", "data_sha256": data_digest, "files": files}
    record["record_sha256"] = json_digest(record)  # a flipped byte here is caught too
    text = json.dumps(record, indent=1, sort_keys=True)
    if not paths.is_local(state_dir):  # an object is whole once written
        (state_dir / RECORD_FILE).write_text(text)
        return
    with open(state_dir / RECORD_FILE, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def verify(step_dir: str | os.PathLike, step: int) -> dict:
    """Raises CorruptCheckpointError naming the first file that is missing, truncated or
    changed since the step was saved (or its integrity record, if that is gone); returns
    the record. Array chunks are checked later, by TensorStore, as they are read."""
    step_dir = epath.Path(step_dir)
    paths.forget_listings(step_dir)
    state_dir = step_dir / "state"
    path = state_dir / RECORD_FILE
    record = _read_record(step, path)
    if json_digest({k: v for k, v in record.items() if k != "record_sha256"}) != record.get(
        "record_sha256"
    ):
        raise CorruptCheckpointError(step, path, "contents changed since it was saved")
    check_files(step, state_dir, record["files"])
    return record


def check_files(step: int, base_dir: str | os.PathLike, expected: dict[str, dict]) -> None:
    """Raises CorruptCheckpointError for the first file under `base_dir` whose size (or
    SHA-256, where `expected` has one) differs from the record's `files` entry."""
    for relative, want in sorted(expected.items()):
        path = epath.Path(base_dir) / relative
        try:
            size = path.stat().length
        except FileNotFoundError:
            raise CorruptCheckpointError(step, path, "file missing") from None
        if size != want["bytes"]:
            raise CorruptCheckpointError(
                step, path, f"{size} bytes, {want['bytes']} when saved (truncated or overwritten)"
            )
        if "sha256" in want and _sha256(path) != want["sha256"]:
            raise CorruptCheckpointError(step, path, "contents changed since it was saved")


def files_under(directory: epath.Path) -> dict[str, int]:
    """Every file under `directory`, by its '/'-joined path relative to it, with its size.
    On gs:// that is one listing per folder: gcsfs answers is_dir and stat from it. (epath's
    walk is not used: on gs:// it yields roots without their scheme.)"""
    paths.forget_listings(directory)  # TensorStore wrote the files, behind gcsfs's back

    def under(folder: epath.Path, prefix: str) -> dict[str, int]:
        files = {}
        for entry in folder.iterdir():
            if entry.is_dir():
                files.update(under(entry, f"{prefix}{entry.name}/"))
            else:
                files[prefix + entry.name] = entry.stat().length
        return files

    return under(directory, "")


def json_digest(value: Any) -> str:
    """SHA-256 of `value` as key-sorted JSON: the same for equal contents, however written."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def agree_on_read(error: Exception | None, step: int, step_dir: epath.Path) -> None:
    """Raises on every process if any process failed to read the step: one process finding
    a bad chunk that only it reads must not leave the others resuming from that step."""
    local = 0 if error is None else 1 if _data_error(error) else 2
    codes = [local]
    if jax.process_count() > 1:
        codes = [int(c) for c in np.asarray(multihost_utils.process_allgather(np.int32(local)))]
    if error is not None:
        with naming_read_errors(step, step_dir):
            raise error
    failed = next((i for i, code in enumerate(codes) if code), None)
    if failed is None:
        return
    if codes[failed] == 1:
        raise CorruptCheckpointError(
            step,
            step_dir / "state",
            f"process {failed} read data that fails its checksum (its error names the array "
            "and chunk); the chunks this process read were intact",
        )
    raise RuntimeError(
        f"reading checkpoint step {step} from {step_dir} failed on process {failed} (see its "
        "error); this process read its part intact"
    )


def _data_error(error: BaseException | None) -> str | None:
    """TensorStore's message for missing, short, checksum-failing or undecodable bytes, if
    that is what `error` (or an error it was raised from) is."""
    while error is not None:
        if isinstance(error, json.JSONDecodeError):
            return f"unreadable JSON ({error})"
        if isinstance(error, ValueError) and (
            str(error).startswith(_DATA_ERRORS) or _DECOMPRESSION_FAILED in str(error)
        ):
            return f"bytes missing, short or changed since it was saved ({error})"
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def naming_read_errors(step: int, step_dir: epath.Path):
    """Re-raises Orbax's read errors with the step and its directory: missing, short or
    checksum-failing bytes as CorruptCheckpointError (TensorStore names the array and
    chunk), anything else as RuntimeError."""
    try:
        yield
    except CorruptCheckpointError:
        raise
    except Exception as error:
        problem = _data_error(error)
        if problem is not None:
            # TensorStore names the chunk's key inside the item's OCDBT database.
            key = re.search(r'"([^"]+)" in OCDBT database', problem)
            path = step_dir / "state" / key.group(1) if key else step_dir
            raise CorruptCheckpointError(step, path, problem) from error
        raise RuntimeError(
            f"reading checkpoint step {step} from {step_dir} failed: "
            f"{type(error).__name__}: {error}"
        ) from error


def _read_record(step: int, path: epath.Path) -> dict:
    try:
        record = json.loads(path.read_text())
        record["files"]  # noqa: B018 (present in every record)
    except FileNotFoundError:
        raise CorruptCheckpointError(
            step, path, "missing; every step flan_jax saves has one"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptCheckpointError(step, path, f"unreadable ({e})") from None
    return record


def _sha256(path: epath.Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
