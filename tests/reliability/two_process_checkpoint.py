"""One of two processes (2 CPU devices each) for test_checkpoint_two_process: saves steps 1
and 2 of a state sharded over all 4 devices, restores step 2 counting the bytes it reads,
then, after process 0 has flipped a byte in a chunk that only process 1 restores, restores
with and without fallback. Prints one `RESULT <json>` line."""

import json
import os
import sys

import jax
import numpy as np
from damage import flip_chunk_checksum
from jax.experimental import multihost_utils

from flan_jax import checkpoints

ROWS = 4 * 2048  # 4 shards of 2048 x 64 float32 (512 KiB each), 2 a process


def kernel(step):
    return np.random.default_rng(step).standard_normal((ROWS, 64), dtype=np.float32)


def main(model_dir, address, process_id):
    jax.distributed.initialize(address, num_processes=2, process_id=process_id)
    mesh = jax.make_mesh((4,), ("x",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def state(step):
        return {
            "kernel": jax.make_array_from_callback((ROWS, 64), rows, lambda i: kernel(step)[i]),
            "step": jax.make_array_from_callback((), replicated, lambda i: np.int32(step)),
        }

    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state(0)
    )
    checkpointer = checkpoints.Checkpointer(model_dir)
    for step in (1, 2):
        checkpointer.save(step, state(step), {"step": step})
    checkpointer.wait_until_finished()

    before = read_so_far()
    restored, _ = checkpointer.restore(abstract, 2)
    restore_reads = read_so_far() - before
    check(restored, 2)

    state_dir = os.path.join(model_dir, "checkpoints", "2", "state")
    own_files = os.path.join(state_dir, f"ocdbt.process_{process_id}", "d")
    own_bytes = sum(os.path.getsize(os.path.join(own_files, n)) for n in os.listdir(own_files))
    multihost_utils.sync_global_devices("restored intact")
    if process_id == 0:  # a chunk that process 1 wrote, and only process 1 reads back
        theirs = os.path.join(state_dir, "ocdbt.process_1", "d")
        largest = max((os.path.join(theirs, n) for n in os.listdir(theirs)), key=os.path.getsize)
        flip_chunk_checksum(largest)  # the checksum of its first chunk: a digest mismatch
    multihost_utils.sync_global_devices("corrupted")

    try:
        checkpointer.restore(abstract, 2)
        refused = None
    except checkpoints.CorruptCheckpointError as e:
        refused = str(e)
    restored, data_state = checkpointer.restore(abstract, fallback=True)
    check(restored, 1)
    checkpointer.close()
    result = {
        "restore_reads": restore_reads,
        "own_chunk_bytes": own_bytes,
        "refused": refused,
        "fell_back_to": data_state["step"],
        "steps_left": sorted(os.listdir(os.path.join(model_dir, "checkpoints"))),
    }
    print("RESULT " + json.dumps(result), flush=True)


def read_so_far():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def check(restored, step):
    """This process's shards hold the saved values."""
    for shard in restored["kernel"].addressable_shards:
        np.testing.assert_array_equal(np.asarray(shard.data), kernel(step)[shard.index])
    assert int(restored["step"].addressable_shards[0].data) == step


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
