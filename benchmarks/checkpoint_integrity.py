"""Checkpoint integrity overhead: save and restore of a T5-large-shaped train state
(parameters + Adafactor's factored second moments, float32) on local disk, Orbax alone
against flan_jax's Checkpointer (chunk CRC32Cs + integrity record), and what the previous
scheme (SHA-256 of every file after a save and before a restore) would add.

  python -m benchmarks.checkpoint_integrity [--scale 1.0] [--repetitions 5] [--dir DIR] [--json]

--scale shrinks every layer's width (0.5: a quarter of the parameters) where memory forbids
the full ~780M. Runs on 8 fake CPU devices, kernels sharded 8 ways on their model axis.
It also runs the two-process restore of tests/reliability (2 processes on 127.0.0.1) and
reports the bytes each process read against the chunk bytes it wrote. `make bench` runs it
in a process of its own (the 8 fake devices must be set before jax is imported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import ctypes  # noqa: E402
import gc  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from etils import epath  # noqa: E402
from orbax.checkpoint._src.serialization import tensorstore_utils  # noqa: E402

from flan_jax import checkpoint_integrity, checkpoints  # noqa: E402

TARGET_OVERHEAD = 0.10
# T5 v1.1 large: d_model 1024, d_ff 2816, 16 heads x 64, 24 + 24 layers, vocabulary 32128.
D_MODEL, D_FF, INNER, LAYERS, VOCAB = 1024, 2816, 1024, 24, 32128


def train_state(scale: float) -> dict:
    """Random float32 kernels of T5-large's shapes (widths times `scale`), each with the
    factored second moments Adafactor keeps for it (a row and a column vector)."""
    mesh = jax.make_mesh((8,), ("model",))
    by_columns = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "model"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    d, ff, inner = (int(x * scale) // 8 * 8 for x in (D_MODEL, D_FF, INNER))
    shapes = {"token_embedder": (VOCAB, d), "logits": (d, VOCAB)}
    for stack, blocks in (("encoder", ("attention",)), ("decoder", ("self", "cross"))):
        for layer in range(LAYERS):
            for block in blocks:
                for name in ("q", "k", "v"):
                    shapes[f"{stack}/{layer}/{block}/{name}"] = (d, inner)
                shapes[f"{stack}/{layer}/{block}/o"] = (inner, d)
            shapes[f"{stack}/{layer}/wi_0"] = (d, ff)
            shapes[f"{stack}/{layer}/wi_1"] = (d, ff)
            shapes[f"{stack}/{layer}/wo"] = (ff, d)
    rng = np.random.default_rng(0)

    def array(shape, sharding):
        value = rng.standard_normal(shape, dtype=np.float32)
        return jax.make_array_from_callback(shape, sharding, lambda i: value[i])

    return {
        "params": {k: array(s, by_columns) for k, s in shapes.items()},
        "v_row": {k: array(s[:1], replicated) for k, s in shapes.items()},
        "v_col": {k: array(s[1:], replicated) for k, s in shapes.items()},
        "step": array((), replicated),
    }


def abstract(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


class OrbaxAlone:
    """What flan_jax did before any integrity checking: the two items through Orbax."""

    def __init__(self, model_dir, item_handlers=None):
        self.manager = ocp.CheckpointManager(
            os.path.join(model_dir, "checkpoints"), item_handlers=item_handlers
        )

    def save(self, step, state, data_state):
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        )
        self.manager.save(step, args=args)
        self.manager.wait_until_finished()

    def restore(self, target, step):
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()
        )
        return self.manager.restore(step, args=args).state

    def close(self):
        self.manager.close()


class OrbaxZarr3(OrbaxAlone):
    """Orbax's own zarr v3 (its zstd level 3), without flan_jax's chunk CRC32C and zstd
    level: what flan_jax's wrapper of the write spec changes."""

    def __init__(self, model_dir):
        super().__init__(
            model_dir,
            {
                "state": ocp.PyTreeCheckpointHandler(use_zarr3=True),
                "data": ocp.JsonCheckpointHandler(),
            },
        )

    def save(self, step, state, data_state):
        with_checksums = tensorstore_utils.build_array_write_spec
        tensorstore_utils.build_array_write_spec = getattr(
            with_checksums, "__wrapped__", with_checksums
        )
        try:
            args = ocp.args.Composite(
                state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(data_state)
            )
            self.manager.save(step, args=args)
            self.manager.wait_until_finished()
        finally:
            tensorstore_utils.build_array_write_spec = with_checksums

    def restore(self, target, step):
        restore_args = jax.tree.map(
            lambda x: ocp.ArrayRestoreArgs(
                sharding=x.sharding, global_shape=x.shape, dtype=x.dtype
            ),
            target,
        )
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args),
            data=ocp.args.JsonRestore(),
        )
        return self.manager.restore(step, args=args).state


class FlanJax:
    def __init__(self, model_dir):
        self.checkpointer = checkpoints.Checkpointer(model_dir, async_save=False)

    def save(self, step, state, data_state):
        self.checkpointer.save(step, state, data_state)

    def restore(self, target, step):
        return self.checkpointer.restore(target, step)[0]

    def close(self):
        self.checkpointer.close()


def sha256_every_file(step_dir: str) -> float:
    """Seconds the previous scheme spent re-reading and hashing the step (once per save on
    process 0, once per restore on every process)."""
    start = time.perf_counter()
    for root, _, names in os.walk(step_dir):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                hashlib.file_digest(f, "sha256")
    return time.perf_counter() - start


def _release_freed_memory() -> None:
    """Hands freed heap back to the OS between repetitions (untimed): each restore
    allocates a whole state, and glibc's per-thread arenas otherwise keep the freed ones
    (RSS grew past 24 GiB over 18 full-size restores and the run was killed)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def integrity_work(step_dir: str) -> tuple[float, float]:
    """Seconds flan_jax's own checking takes, apart from Orbax and TensorStore: writing
    the integrity record (primary host, at save) and checking it (every process, at
    restore). The chunk CRC32Cs are computed inside TensorStore's writes and reads."""
    start = time.perf_counter()
    checkpoint_integrity.write_record(
        os.path.join(step_dir, "state"), checkpoint_integrity.json_digest({})
    )
    written = time.perf_counter()
    checkpoint_integrity.check_files(1, os.path.join(step_dir, "state"), _record(step_dir)["files"])
    return written - start, time.perf_counter() - written


def _record(step_dir):
    with open(os.path.join(step_dir, "state", checkpoint_integrity.RECORD_FILE)) as f:
        return json.load(f)


def measure(scale: float, repetitions: int, directory: str | None) -> dict:
    state = train_state(scale)
    target = abstract(state)
    size = sum(x.nbytes for x in jax.tree.leaves(state))
    params = sum(x.size for x in jax.tree.leaves(state["params"]))
    sides = {"orbax": OrbaxAlone, "orbax_zarr3": OrbaxZarr3, "flan_jax": FlanJax}
    times = {side: {"save": [], "restore": []} for side in sides}
    hashing, checks, sizes = [], [], {}
    root = tempfile.mkdtemp(dir=directory)
    try:
        for repetition in range(repetitions + 1):  # the first is a warm-up
            for side, cls in sides.items():
                model_dir = os.path.join(root, side)
                shutil.rmtree(model_dir, ignore_errors=True)
                checkpointer = cls(model_dir)
                os.sync()  # no earlier writes still being flushed into this timing
                start = time.perf_counter()
                checkpointer.save(1, state, {"step": 1})
                saved = time.perf_counter()
                os.sync()
                restore_start = time.perf_counter()
                restored = checkpointer.restore(target, 1)
                jax.block_until_ready(restored)
                done = time.perf_counter()
                checkpointer.close()
                step_dir = os.path.join(model_dir, "checkpoints", "1")
                if repetition:
                    times[side]["save"].append(saved - start)
                    times[side]["restore"].append(done - restore_start)
                    sizes[side] = sum(
                        checkpoint_integrity.files_under(epath.Path(step_dir)).values()
                    )
                if side == "orbax" and repetition:
                    hashing.append(sha256_every_file(step_dir))
                if side == "flan_jax" and repetition:
                    checks.append(integrity_work(step_dir))
                del restored
                _release_freed_memory()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    medians = {s: {op: statistics.median(v) for op, v in ops.items()} for s, ops in times.items()}
    return {
        "params": params,
        "bytes": size,
        "medians": medians,
        "ranges": {s: {op: [min(v), max(v)] for op, v in ops.items()} for s, ops in times.items()},
        "on_disk": sizes,
        "overhead": {
            f"{base}_{op}": medians["flan_jax"][op] / medians[base][op] - 1
            for base in ("orbax", "orbax_zarr3")
            for op in ("save", "restore")
        },
        "sha256_s": statistics.median(hashing),
        "record_s": statistics.median(c[0] for c in checks),
        "verify_s": statistics.median(c[1] for c in checks),
    }


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_PROCESS_WORKER = os.path.join(REPO, "tests", "reliability", "two_process_checkpoint.py")


def two_process_reads(directory: str | None) -> list[dict]:
    """Per process: bytes read (/proc/self/io rchar) restoring a state sharded over both
    processes, and the chunk bytes that process wrote."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "PYTHONPATH": REPO}  # fmt: skip
    root = tempfile.mkdtemp(dir=directory)
    try:
        procs = [
            subprocess.Popen([sys.executable, TWO_PROCESS_WORKER, root, address, str(i)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)
        ]  # fmt: skip
        results = []
        for process, proc in enumerate(procs):
            out = proc.communicate(timeout=600)[0]
            found = re.search(r"^RESULT (.*)$", out, re.M)
            if proc.returncode or not found:
                raise RuntimeError(f"two-process restore, process {process} failed:\n{out[-3000:]}")
            results.append(json.loads(found.group(1)))
        return [{"read": r["restore_reads"], "own": r["own_chunk_bytes"]} for r in results]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def markdown(result: dict) -> str:
    m, gib = result["medians"], result["bytes"] / 2**30
    rows = [
        f"Train state: {result['params'] / 1e6:.0f}M parameters + Adafactor factored moments, "
        f"float32, {gib:.2f} GiB; local disk (page cache warm; `sync` before each timed save "
        "and restore, so no side's timing absorbs another's write-back), 8 CPU devices; "
        f"median (min-max) of {result.get('repetitions', '?')} repetitions.",
        "",
        "| | save s | restore s | on disk GiB |",
        "|---|---|---|---|",
    ]
    labels = {"orbax": "Orbax alone (zarr v2, zstd 1, as before)",
              "orbax_zarr3": "Orbax, zarr v3 (its zstd 3), without chunk CRC32C",
              "flan_jax": f"flan_jax (zarr v3, zstd {checkpoint_integrity.ZSTD_LEVEL}, "
                          "chunk CRC32C, integrity record)"}  # fmt: skip
    for side, label in labels.items():
        cells = [f"{m[side][op]:.2f} ({result['ranges'][side][op][0]:.2f}-"
                 f"{result['ranges'][side][op][1]:.2f})" for op in ("save", "restore")]  # fmt: skip
        rows.append(f"| {label} | {' | '.join(cells)} | {result['on_disk'][side] / 2**30:.3f} |")
    for base, label in (("orbax", "Orbax alone"), ("orbax_zarr3", "Orbax zarr v3")):
        o = result["overhead"]
        rows.append(
            f"| overhead vs {label} (target <= {100 * TARGET_OVERHEAD:.0f}%) | "
            f"{100 * o[f'{base}_save']:+.1f}% | {100 * o[f'{base}_restore']:+.1f}% | |"
        )
    rows += [
        f"| of which flan_jax's own checks (record write / record check) | "
        f"{result['record_s']:.3f} | {result['verify_s']:.3f} | |",
        f"| previous scheme's SHA-256 re-read, added to each | +{result['sha256_s']:.2f} | "
        f"+{result['sha256_s']:.2f} | |",
    ]
    rows += ["", "Restore on 2 processes (each holding half of a 4 MiB kernel): bytes read "
             "(/proc/self/io rchar) against the chunk bytes the process owns.", "",
             "| process | bytes read | own chunk bytes | read / own |",
             "|---|---|---|---|"]  # fmt: skip
    rows += [f"| {i} | {p['read']:,} | {p['own']:,} | {p['read'] / p['own']:.2f} |"
             for i, p in enumerate(result["two_process"])]  # fmt: skip
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: $TMPDIR)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    result = measure(args.scale, args.repetitions, args.dir)
    result["repetitions"] = args.repetitions
    result["two_process"] = two_process_reads(args.dir)
    result["markdown"] = markdown(result)
    print("RESULT " + json.dumps(result) if args.json else result["markdown"])


if __name__ == "__main__":
    main()
