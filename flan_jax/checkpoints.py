"""Orbax checkpoints of a run: train state plus the input pipeline's position, saved together
into `<model_dir>/checkpoints/<step>`, resumed from, and set aside when corrupt.

Each step is written with chunk checksums and an integrity record, and checked before and
while it is read (`flan_jax.checkpoint_integrity`). A failed save is named with its step and
directory (CheckpointWriteError). Paths are `etils.epath` paths (`flan_jax.paths`), so a
MODEL_DIR on gs:// works as a local one.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from flan_jax import checkpoint_integrity, paths
from flan_jax.checkpoint_integrity import CorruptCheckpointError

log = logging.getLogger(__name__)

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OUT_OF_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


class CheckpointWriteError(OSError):
    """Saving a step failed (a full disk, storage that is gone or refuses the write); the
    steps saved before are untouched."""


class _CheckedPyTreeHandler(ocp.PyTreeCheckpointHandler):
    """The `state` item: zarr v3 arrays (so chunks carry CRC32Cs), the integrity record
    written when Orbax finalizes the item, and read errors held back until every process
    has finished reading (Orbax's restore ends in a barrier that a raising process would
    never reach)."""

    def __init__(self):
        checkpoint_integrity.add_chunk_checksums()
        super().__init__(use_zarr3=True)
        self.data_digest: str | None = None  # of the `data` item being saved
        self.restore_error: Exception | None = None

    def finalize(self, directory) -> None:
        super().finalize(directory)
        if jax.process_index() == 0:
            checkpoint_integrity.write_record(directory, self.data_digest)

    def restore(self, directory, args=None):
        self.restore_error = None
        try:
            return super().restore(directory, args=args)
        except Exception as error:
            self.restore_error = error
            return None


@ocp.args.register_with_handler(_CheckedPyTreeHandler, for_save=True)
class _StateSave(ocp.args.PyTreeSave):
    """PyTreeSave, for the handler above."""


@ocp.args.register_with_handler(_CheckedPyTreeHandler, for_restore=True)
class _StateRestore(ocp.args.PyTreeRestore):
    """PyTreeRestore, for the handler above."""


class Checkpointer:
    """Async, keep-N checkpoints of a TrainState in `<model_dir>/checkpoints/<step>`.

    Each step holds two items: `state` (params, optimizer state, step; sharded arrays)
    and `data` (JSON: where the input pipeline stands), so a resumed run sees exactly the
    batches an uninterrupted one would. Orbax writes into a temporary directory and renames
    it when complete, so a crash mid-save never leaves a checkpoint that looks finished; the
    integrity record and the chunk checksums committed with it let every restore prove the
    bytes it reads unchanged.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        async_save: bool = True,
    ):
        self.directory = paths.path(model_dir, "MODEL_DIR") / "checkpoints"
        self._async_save = async_save
        self._saving_step: int | None = None
        self._state_handler = _CheckedPyTreeHandler()
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers={"state": self._state_handler, "data": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=True,
                create=True,
                # Partial saves of a killed run: never listed as steps, removed on reopening.
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Starts saving `step` (in the background unless async_save=False).

        A failed write (full disk, quota) raises CheckpointWriteError here or at the next
        save / wait_until_finished; its partial directory is removed, earlier steps stay.
        """
        with self._reporting_write_errors():
            self._manager.wait_until_finished()  # finalizing the last step reads data_digest
            self._saving_step = step
            self._state_handler.data_digest = checkpoint_integrity.json_digest(data_state)
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=_StateSave(state), data=ocp.args.JsonSave(data_state)
                ),
                force=force,
            )
            if not self._async_save:
                self._manager.wait_until_finished()
        return saved

    def restore(
        self, abstract_state: Any, step: int | None = None, *, fallback: bool = False
    ) -> tuple[Any, dict]:
        """Restores onto `abstract_state`'s shardings (which may differ from the saved ones).

        The step's integrity record is checked first, then each chunk as it is read. A
        corrupt step raises CorruptCheckpointError on every process; with `fallback` (and no
        explicit `step`) it is moved aside to `<step>.corrupt-<time>` and the newest intact
        earlier step is restored instead.
        """
        candidates = sorted(self.all_steps(), reverse=True) if step is None else [step]
        if not candidates:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}.")
        for candidate in candidates:
            try:
                return self._restore_step(abstract_state, candidate)
            except CorruptCheckpointError as e:
                if not fallback or step is not None:
                    raise
                log.warning(
                    "checkpoint step %d is corrupt (%s: %s); falling back to the step before it",
                    e.step,
                    e.path,
                    e.problem,
                )
                self._set_aside(candidate)
        raise FileNotFoundError(
            f"no intact checkpoint left in {self.directory}: steps {candidates} are all corrupt "
            "(moved aside as <step>.corrupt-*)."
        )

    def _restore_step(self, abstract_state: Any, step: int) -> tuple[Any, dict]:
        step_dir = self.directory / str(step)
        record = checkpoint_integrity.verify(step_dir, step)
        abstract_params = getattr(abstract_state, "params", None)
        if abstract_params is not None:
            _check_param_shapes(step_dir, step, abstract_params)
        with checkpoint_integrity.naming_read_errors(step, step_dir):
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=_pytree_restore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        checkpoint_integrity.agree_on_read(self._state_handler.restore_error, step, step_dir)
        data_state = dict(restored.data)
        if checkpoint_integrity.json_digest(data_state) != record["data_sha256"]:
            raise CorruptCheckpointError(
                step, step_dir / "data", "contents changed since it was saved"
            )
        log.info("restored step %d from %s", step, self.directory)
        return restored.state, data_state

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            step_dir = self.directory / str(step)
            aside = self.directory / f"{step}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            step_dir.rename(aside)
            log.warning("moved corrupt checkpoint step %d to %s", step, aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"flan_jax: step {step} set aside")
        self._manager.reload()

    @contextlib.contextmanager
    def _reporting_write_errors(self):
        """A failed save becomes CheckpointWriteError naming the step, the directory and the
        intact earlier steps; its partial directory is removed (best effort: the storage may
        be gone) to give the space back."""
        try:
            yield
        except Exception as error:
            step = self._saving_step
            intact = [s for s in self.all_steps() if s != step]  # as listed before the save
            if jax.process_index() == 0:
                remove_partial_save(self.directory, step)
            with contextlib.suppress(Exception):
                self._manager.reload()
            if _is_out_of_space(error):
                cause = "the disk is full"
                fix = "free space (or point MODEL_DIR at a larger disk)"
            elif paths.is_local(self.directory):
                cause, fix = "the write failed", "fix the cause"
            else:
                cause = "the storage refused the write or could not be reached"
                fix = "check that the bucket exists and these credentials may write to it"
            raise CheckpointWriteError(
                f"saving checkpoint step {step} to {self.directory} failed: {cause} "
                f"({type(error).__name__}: {error}). Earlier checkpoints {intact} are intact; "
                f"{fix} and rerun the same command to resume."
            ) from error

    def wait_until_finished(self) -> None:
        with self._reporting_write_errors():
            self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def remove_partial_save(directory: epath.Path, step: int, attempts: int = 50) -> None:
    """Removes what a failed save of `step` left in `directory`: `<step>` and `<step>.*`
    other than steps set aside as corrupt (Orbax writes into a temporary `<step>.<suffix>`
    on local disk, into `<step>` itself on GCS until its commit file lands).
    Orbax's other writers may still be finishing after the first failure and recreate files
    in it, so retry until it stays gone; storage that cannot be reached is left as it is."""

    def leftovers():
        return [
            entry
            for entry in directory.iterdir()
            if entry.name == str(step)
            or (entry.name.startswith(f"{step}.") and ".corrupt-" not in entry.name)
        ]

    try:
        for _ in range(attempts):
            for partial in leftovers():
                with contextlib.suppress(OSError):
                    partial.rmtree() if partial.is_dir() else partial.unlink()
            time.sleep(0.1)
            if not leftovers():
                return
    except Exception as error:  # the storage is gone: the error raised after says so
        log.warning("could not remove the partial save of step %d: %s", step, error)


def saved_arrays(step_dir: epath.Path) -> dict:
    """The array metadata (shapes) of the train state saved in `step_dir`, by item: "params",
    and a training run's "step" and "opt_state"."""
    with checkpoint_integrity.naming_read_errors(int(step_dir.name), step_dir):
        return dict(ocp.PyTreeCheckpointer().metadata(step_dir / "state").item_metadata.tree)


def read_state(step_dir: epath.Path, abstract: dict) -> dict:
    """The items of the train state in `step_dir` that `abstract` names (with "params"), on
    its abstract arrays' shardings, checked as a resume checks them; what the step lacks
    stays the abstract leaf it was asked for."""
    step = int(step_dir.name)
    checkpoint_integrity.verify(step_dir, step)
    _check_param_shapes(step_dir, step, abstract["params"])
    handler = _CheckedPyTreeHandler()
    with checkpoint_integrity.naming_read_errors(step, step_dir):
        restored = ocp.Checkpointer(handler).restore(
            step_dir / "state", args=_pytree_restore(abstract, partial=True)
        )
    checkpoint_integrity.agree_on_read(handler.restore_error, step, step_dir)
    return restored


def _pytree_restore(target: Any, *, partial: bool = False) -> _StateRestore:
    """Restore args placing each array of `target` (abstract arrays) on its sharding."""
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
        target,
    )
    return _StateRestore(item=target, restore_args=restore_args, partial_restore=partial)


def shape_mismatches(
    have: Any, want: Any, name: Callable = jax.tree_util.keystr
) -> list[tuple[str, tuple | None, tuple | None]]:
    """(leaf name, its shape in `have`, in `want`) for every leaf whose shape differs between
    the two trees or that only one of them has (None for the other), sorted by name; leaves
    are named by `name` of their key path."""

    def shapes(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {name(path): tuple(leaf.shape) for path, leaf in leaves}

    have, want = shapes(have), shapes(want)
    return [
        (leaf, have.get(leaf), want.get(leaf))
        for leaf in sorted(have.keys() | want.keys())
        if have.get(leaf) != want.get(leaf)
    ]


def first_five(items: list[str], separator: str) -> str:
    """`items` joined, at most five of them: enough to see the pattern in an error."""
    return separator.join(items[:5]) + (" ..." if len(items) > 5 else "")


def _check_param_shapes(step_dir: epath.Path, step: int, abstract_params: Any) -> None:
    """Names every parameter whose saved shape differs from the model's (Orbax would only
    say that some array does not fit). The usual cause is another vocabulary."""
    saved = saved_arrays(step_dir).get("params", {})
    mismatches = [
        f"{leaf} saved {have}, model {want}"
        for leaf, have, want in shape_mismatches(saved, abstract_params)
        if None not in (have, want)  # what the step lacks, a partial restore names
    ]
    if mismatches:
        raise ValueError(
            f"checkpoint step {step} at {step_dir} does not fit this model: "
            f"{first_five(mismatches, '; ')}. A "
            "differing token_embedder/logits dimension is the vocabulary size: the checkpoint "
            "was trained with another vocabulary than this run's VOCAB_SIZE and task; use the "
            "checkpoint's vocabulary (and VOCAB_SIZE) or another checkpoint. Other dimensions "
            "mean another model size."
        )


def _is_out_of_space(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in _OUT_OF_SPACE:
            return True
        if any(text in str(error) for text in _OUT_OF_SPACE_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False
