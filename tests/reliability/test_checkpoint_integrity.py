"""Checkpoint integrity at O(shard) cost: the fault table on local disk and on gs:// (the fake
GCS server of tests/gcs.py; each case refused naming the step and the file, fallback to the
previous intact step), chunks checksummed in the array codecs (through a wrapper of Orbax's
internal write-spec builder, checked here against the pinned Orbax), and a restore that reads
only the bytes it restores."""

import glob
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from damage import delete, flip_a_byte, truncate
from etils import epath
from gcs import assert_no_local_gs_folder, files_under

from flan_jax import checkpoint_integrity, checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROWS = 8 * 256  # 8 shards of 256 x 64 float32: 64 KiB each


def sharded_state(scale=1.0):
    """A state sharded 8 ways over the 8 fake devices, plus a replicated scalar step."""
    mesh = jax.make_mesh((8,), ("x",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    kernel = np.arange(ROWS * 64, dtype=np.float32).reshape(ROWS, 64) * scale
    return {
        "kernel": jax.device_put(kernel, rows),
        "step": jax.device_put(jnp.int32(scale), replicated),
    }


def abstract(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def save_steps(root) -> epath.Path:
    """Steps 1 and 2 of a run in `root`, each with its input position."""
    checkpointer = checkpoints.Checkpointer(str(root), async_save=False)
    for step in (1, 2):
        checkpointer.save(step, sharded_state(step), {"step": step, "seed": 7})
    checkpointer.close()
    return epath.Path(root) / "checkpoints"


@pytest.fixture
def saved(tmp_path):
    """Steps 1 and 2 on local disk."""
    return save_steps(tmp_path)


@pytest.fixture(params=["local", "gs"])
def saved_anywhere(request, tmp_path):
    """Steps 1 and 2 on local disk, and in a gs:// bucket (then no local `gs:` folder may
    appear, before or after the test's damage and restore)."""
    if request.param == "local":
        yield save_steps(tmp_path)
        return
    yield save_steps(request.getfixturevalue("gcs").path(request.node.name))
    assert_no_local_gs_folder()


def restore(directory, **kwargs):
    checkpointer = checkpoints.Checkpointer(str(directory.parent))
    try:
        return checkpointer.restore(abstract(sharded_state()), **kwargs)
    finally:
        checkpointer.close()


def data_files(step_dir):
    """OCDBT's data files of the state item, largest first (the array chunks)."""
    files = [
        path for path in files_under(epath.Path(step_dir) / "state") if path.parent.name == "d"
    ]
    return sorted(files, key=lambda path: path.stat().length, reverse=True)


def test_save_then_restore_round_trips_state_and_data_state(saved_anywhere):
    state, data_state = restore(saved_anywhere)
    assert data_state == {"step": 2, "seed": 7}
    np.testing.assert_array_equal(state["kernel"], sharded_state(2)["kernel"])
    assert int(state["step"]) == 2


def test_every_chunk_carries_a_crc32c_and_the_record_covers_the_small_files(saved):
    state_dir = saved / "2" / "state"
    kvstore = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{state_dir}"}).result()
    zarr = json.loads(kvstore.read(b"kernel/zarr.json").result().value)
    (sharding,) = zarr["codecs"]
    assert sharding["name"] == "sharding_indexed"
    chunk_codecs = sharding["configuration"]["codecs"]
    assert chunk_codecs[-1] == {"name": "crc32c"}  # each chunk, over its compressed bytes
    (zstd,) = (c for c in chunk_codecs if c["name"] == "zstd")
    assert zstd["configuration"]["level"] == checkpoint_integrity.ZSTD_LEVEL
    assert {"name": "crc32c"} in sharding["configuration"]["index_codecs"]
    record = json.loads((state_dir / checkpoint_integrity.RECORD_FILE).read_text())
    on_disk = {
        os.path.relpath(p, state_dir)
        for p in glob.glob(f"{state_dir}/**/*", recursive=True)
        if os.path.isfile(p)
    }
    assert set(record["files"]) <= on_disk and "_METADATA" in record["files"]
    for relative, entry in record["files"].items():
        assert entry["bytes"] == os.path.getsize(state_dir / relative)
        in_data_dir = "d" in relative.split(os.sep)[:-1]
        assert ("sha256" in entry) != in_data_dir, relative  # data files: sizes only
        if not in_data_dir:
            assert (
                entry["sha256"] == hashlib.sha256((state_dir / relative).read_bytes()).hexdigest()
            )
    small = sum(e["bytes"] for e in record["files"].values() if "sha256" in e)
    assert small < 16 * 1024  # what a save and a restore hash, whatever the model size


def test_the_pinned_orbax_is_the_one_the_chunk_checksums_are_written_for():
    """Moving the pin in constraints.txt means checking the wrapper of Orbax's internal
    write-spec builder (the tests below) and then moving ORBAX_VERSION with it."""
    with open(os.path.join(REPO, "constraints.txt")) as f:
        pins = [line.strip() for line in f if line.startswith("orbax-checkpoint==")]
    assert pins == [f"orbax-checkpoint=={checkpoint_integrity.ORBAX_VERSION}"]
    assert ocp.__version__ == checkpoint_integrity.ORBAX_VERSION


def test_the_write_spec_builder_gets_the_chunk_crc32c_once(tmp_path):
    """Fails when Orbax's internal builder moves, changes its arguments, or stops building
    the sharded zarr v3 codec chain that the crc32c codec is appended to."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    checkpoint_integrity.add_chunk_checksums()
    checkpoint_integrity.add_chunk_checksums()
    build = tensorstore_utils.build_array_write_spec
    assert build.adds_chunk_checksums and not hasattr(build.__wrapped__, "adds_chunk_checksums")
    assert list(inspect.signature(build.__wrapped__).parameters) == [
        "info", "arg", "global_shape", "local_shape", "dtype", "use_ocdbt", "process_index",
        "replica_separate_folder", "metadata_key", "ext_metadata",
    ]  # fmt: skip
    info = ocp.type_handlers.ParamInfo(
        name="kernel", parent_dir=epath.Path(tmp_path), use_zarr3=True, use_compression=True
    )
    spec = build(
        info, global_shape=(64, 8), local_shape=(8, 8), dtype=np.dtype("float32"), use_ocdbt=True
    )
    (sharding,) = spec.json["metadata"]["codecs"]
    chunk_codecs = sharding["configuration"]["codecs"]
    assert chunk_codecs[-1] == {"name": "crc32c"}
    assert {"name": "zstd", "configuration": {"level": checkpoint_integrity.ZSTD_LEVEL}} in (
        chunk_codecs
    )


def test_importing_flan_jax_leaves_orbax_unpatched():
    """The chunk codec is added when a checkpoint handler is made, not as a side effect of
    an import."""
    script = (
        "import flan_jax.checkpoints, flan_jax.model_loader\n"
        "from orbax.checkpoint._src.serialization import tensorstore_utils\n"
        "print(hasattr(tensorstore_utils.build_array_write_spec, 'adds_chunk_checksums'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False"]


def refusal(step, path, problem):
    return (
        rf"checkpoint step {step} is corrupt: {re.escape(str(path))}: {problem}\. Nothing was "
        r"loaded from it\. Set --gin.CHECKPOINT_FALLBACK=True"
    )


@pytest.mark.parametrize(
    "damage, problem",
    [
        (truncate, r"\d+ bytes, \d+ when saved \(truncated or overwritten\)"),
        (delete, "file missing"),
    ],
)
def test_truncated_or_deleted_data_file_is_refused_before_reading(saved_anywhere, damage, problem):
    damaged = data_files(saved_anywhere / "2")[0]
    damage(damaged)
    with pytest.raises(checkpoints.CorruptCheckpointError, match=refusal(2, damaged, problem)):
        restore(saved_anywhere)


def test_flipped_byte_in_a_chunk_fails_its_checksum_naming_the_array_chunk(saved_anywhere):
    saved = saved_anywhere
    flip_a_byte(data_files(saved / "2")[0])
    with pytest.raises(checkpoints.CorruptCheckpointError) as caught:
        restore(saved)
    path = os.fspath(caught.value.path)
    assert re.fullmatch(rf"{re.escape(str(saved))}/2/state/kernel/c/\d+/0", path)
    assert re.match(
        refusal(
            2,
            path,
            r"bytes missing, short or changed since it was saved "
            r"\(DATA_LOSS: .*Digest mismatch.*\)",
        ),
        str(caught.value),
    )


def test_flipped_byte_in_a_compressed_chunk_header_is_refused_as_corrupt(saved_anywhere):
    """TensorStore checks a chunk's CRC32C at the end of its stream: a flip in the zstd
    frame's header fails in zstd first, and is the same corruption (seen as a rare
    two-process failure: the middle byte of a data file can be a frame's first)."""
    saved = saved_anywhere
    path = data_files(saved / "2")[0]
    frame = path.read_bytes().find(b"\x28\xb5\x2f\xfd")  # zstd's magic number
    assert frame >= 0
    flip_a_byte(path, at=frame)
    with pytest.raises(checkpoints.CorruptCheckpointError) as caught:
        restore(saved)
    assert re.fullmatch(rf"{re.escape(str(saved))}/2/state/kernel/c/\d+/0", str(caught.value.path))
    assert "ZSTD_decompressStream() failed" in str(caught.value)
    state, data_state = restore(saved, fallback=True)
    assert data_state["step"] == 1


@pytest.mark.parametrize("name", ["_METADATA", checkpoint_integrity.RECORD_FILE])
def test_flipped_byte_or_deleted_metadata_file_is_refused(saved_anywhere, name):
    saved = saved_anywhere
    path = saved / "2" / "state" / name
    flip_a_byte(path)
    problem = "(contents changed since it was saved|unreadable)"
    with pytest.raises(checkpoints.CorruptCheckpointError, match=refusal(2, path, problem)):
        restore(saved)
    delete(path)
    problem = (
        "file missing" if name == "_METADATA" else "missing; every step flan_jax saves has one"
    )
    with pytest.raises(checkpoints.CorruptCheckpointError, match=refusal(2, path, problem)):
        restore(saved)


def test_changed_data_item_is_refused(saved_anywhere):
    saved = saved_anywhere
    data_dir = saved / "2" / "data"
    (path,) = [p for p in data_dir.iterdir() if p.is_file() and "step" in p.read_text()]
    path.write_text(path.read_text().replace('"seed": 7', '"seed": 8'))
    with pytest.raises(
        checkpoints.CorruptCheckpointError,
        match=refusal(2, saved / "2" / "data", "contents changed since it was saved"),
    ):
        restore(saved)


def test_fallback_restores_the_previous_intact_step(saved_anywhere, caplog):
    saved = saved_anywhere
    flip_a_byte(data_files(saved / "2")[0])
    state, data_state = restore(saved, fallback=True)
    assert data_state == {"step": 1, "seed": 7}
    np.testing.assert_array_equal(state["kernel"], sharded_state(1)["kernel"])
    assert "checkpoint step 2 is corrupt" in caplog.text and "falling back" in caplog.text
    names = sorted(path.name for path in saved.iterdir())
    assert names[0] == "1" and re.fullmatch(r"2\.corrupt-[\d-]+", names[1]), names


def read_bytes(run):
    """Bytes this process reads (read/pread system calls) while `run()` runs."""

    def rchar():
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("rchar:")).split()[1])

    before = rchar()
    result = run()
    return rchar() - before, result


def test_a_restore_reads_the_chunks_once_and_little_else(saved):
    """Integrity checking adds no second read: the checked restore reads what Orbax alone
    reads plus the integrity record and the small files it hashes (a few KiB)."""
    target = abstract(sharded_state())
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
        target,
    )
    orbax_alone, _ = read_bytes(
        lambda: ocp.PyTreeCheckpointer().restore(
            saved / "2" / "state",
            args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args),
        )
    )
    checked, (state, _) = read_bytes(lambda: restore(saved))
    np.testing.assert_array_equal(state["kernel"], sharded_state(2)["kernel"])
    record = json.loads((saved / "2" / "state" / checkpoint_integrity.RECORD_FILE).read_text())
    hashed = sum(e["bytes"] for e in record["files"].values() if "sha256" in e)
    chunks = sum(os.path.getsize(p) for p in data_files(saved / "2"))
    assert orbax_alone >= 0.9 * chunks  # the counter sees TensorStore's reads
    assert checked <= orbax_alone + 2 * hashed + 64 * 1024, (checked, orbax_alone, hashed)
