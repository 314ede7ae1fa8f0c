"""Orbax checkpoints: train state plus the input pipeline's position, saved together."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# Written into each step directory before Orbax renames it into place, so it is part of the
# atomic commit: sizes and SHA-256 of every file of the saved items.
MANIFEST = "flan_jax_manifest.json"
_ITEMS = ("state", "data")
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_OUT_OF_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


class CorruptCheckpointError(RuntimeError):
    """A step directory whose files do not match the manifest written when it was saved."""

    def __init__(self, step: int, path: str, problem: str):
        self.step, self.path, self.problem = step, path, problem
        super().__init__(
            f"checkpoint step {step} is corrupt: {path}: {problem}. Nothing was loaded from it. "
            "Set --gin.CHECKPOINT_FALLBACK=True to resume from the newest intact earlier step "
            "(the corrupt one is moved aside), or delete that step directory."
        )


class CheckpointWriteError(OSError):
    """Saving a step failed (typically a full disk); the steps saved before are untouched."""


class Checkpointer:
    """Async, keep-N checkpoints of a TrainState in `<model_dir>/checkpoints/<step>`.

    Each step holds two items: `state` (params, optimizer state, step; sharded arrays)
    and `data` (JSON: where the input pipeline stands), so a resumed run sees exactly the
    batches an uninterrupted one would. Orbax writes into a temporary directory and renames
    it when complete, so a crash mid-save never leaves a checkpoint that looks finished; the
    manifest written just before that rename lets every restore prove the files unchanged.
    """

    def __init__(self, model_dir: str, *, max_to_keep: int | None = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
        self._async_save = async_save
        self._saving_step: int | None = None
        # Always Orbax's async path, whose finalization hook writes the manifest; a
        # synchronous save simply waits for it.
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=True,
                create=True,
                # Partial saves of a killed run: never listed as steps, removed on reopening.
                cleanup_tmp_directories=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._write_manifest),
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
            self._manager.wait_until_finished()  # the manifest hook reads _saving_step
            self._saving_step = step
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
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

        Every file is checked against the step's manifest first. A corrupt step raises
        CorruptCheckpointError; with `fallback` (and no explicit `step`) it is moved aside to
        `<step>.corrupt-<time>` and the newest intact earlier step is restored instead.
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
        step_dir = os.path.join(self.directory, str(step))
        verify(step_dir, step)
        abstract_params = getattr(abstract_state, "params", None)
        if abstract_params is not None:
            _check_param_shapes(step_dir, step, abstract_params)
        with _naming_the_step(step, step_dir):
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        log.info("restored step %d from %s", step, self.directory)
        return restored.state, dict(restored.data)

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            step_dir = os.path.join(self.directory, str(step))
            aside = f"{step_dir}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(step_dir, aside)
            log.warning("moved corrupt checkpoint step %d to %s", step, aside)
        self._manager.reload()

    def _write_manifest(self) -> None:
        """Orbax's post-finalization hook: runs after every file of the step is written and
        before the step directory is renamed into place."""
        if jax.process_index() != 0:
            return
        step = self._saving_step
        pending = glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*"))
        step_dir = pending[0] if len(pending) == 1 else os.path.join(self.directory, str(step))
        manifest = {"step": step, "files": _file_digests(step_dir)}
        with open(os.path.join(step_dir, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    @contextlib.contextmanager
    def _reporting_write_errors(self):
        """A failed save becomes CheckpointWriteError naming the step, the directory and the
        intact earlier steps; its partial directory is removed to give the space back."""
        try:
            yield
        except Exception as error:
            step = self._saving_step
            if jax.process_index() == 0:
                _remove_partial_save(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*"))
            self._manager.reload()
            intact = [s for s in self.all_steps() if s != step]
            cause = "the disk is full" if _is_out_of_space(error) else "the write failed"
            raise CheckpointWriteError(
                f"saving checkpoint step {step} to {self.directory} failed: {cause} "
                f"({type(error).__name__}: {error}). Earlier checkpoints {intact} are intact; "
                "free space (or point MODEL_DIR at a larger disk) and rerun the same command "
                "to resume."
            ) from error

    def wait_until_finished(self) -> None:
        with self._reporting_write_errors():
            self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _remove_partial_save(pattern: str, attempts: int = 50) -> None:
    """Removes a failed save's directory. Orbax's other writers may still be finishing
    after the first failure and recreate files in it, so retry until it stays gone."""
    for _ in range(attempts):
        for partial in glob.glob(pattern):
            shutil.rmtree(partial, ignore_errors=True)
        time.sleep(0.1)
        if not glob.glob(pattern):
            return


def restore_params(path: str, abstract_params: Any) -> Any:
    """Parameters alone from a flan_jax checkpoint directory, for finetuning from it.

    `path` is a step directory (`.../checkpoints/1000`) or a model dir / checkpoints dir,
    whose latest step is used.
    """
    path = os.path.abspath(path)
    step_dir = _resolve_step_dir(path)
    step = int(os.path.basename(step_dir))
    verify(step_dir, step)
    _check_param_shapes(step_dir, step, abstract_params)
    with _naming_the_step(step, step_dir):
        restored = _restore_subtree(os.path.join(step_dir, "state"), {"params": abstract_params})
    # A partial restore leaves what the checkpoint lacks as the abstract leaf it was asked for.
    missing = [
        jax.tree_util.keystr(key_path)
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(restored["params"])
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if missing:
        raise ValueError(
            f"checkpoint {step_dir} has no parameters {_first_five(missing, ', ')}; it was "
            "written for another model config: check the layer counts and scan_layers "
            "(an HF import for scan_layers=True needs `hf_t5 import --scan_layers`)"
        )
    return restored["params"]


def _restore_subtree(state_dir: str, target: dict) -> dict:
    handler = ocp.PyTreeCheckpointer()
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype),
        target,
    )
    return handler.restore(
        state_dir,
        args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
    )


def _resolve_step_dir(path: str) -> str:
    if os.path.isdir(os.path.join(path, "state")):
        return path
    for directory in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(directory):
            steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
            if steps:
                return os.path.join(directory, str(max(steps)))
    raise FileNotFoundError(
        f"INITIAL_CHECKPOINT_PATH {path!r} holds no flan_jax checkpoint: expected a step "
        "directory containing 'state/', or a model dir with checkpoints/<step>/."
    )


def verify(step_dir: str, step: int) -> None:
    """Raises CorruptCheckpointError naming the first file that is missing, truncated or
    changed since the step was saved (or the manifest itself, if that is gone)."""
    manifest_path = os.path.join(step_dir, MANIFEST)
    try:
        with open(manifest_path) as f:
            expected = json.load(f)["files"]
    except FileNotFoundError:
        raise CorruptCheckpointError(
            step, manifest_path, "missing; every step flan_jax saves has one"
        ) from None
    except (ValueError, KeyError) as e:
        raise CorruptCheckpointError(step, manifest_path, f"unreadable ({e})") from None
    for relative, want in sorted(expected.items()):
        path = os.path.join(step_dir, relative)
        if not os.path.isfile(path):
            raise CorruptCheckpointError(step, path, "file missing")
        size = os.path.getsize(path)
        if size != want["bytes"]:
            raise CorruptCheckpointError(
                step, path, f"{size} bytes, {want['bytes']} when saved (truncated or overwritten)"
            )
        if _sha256(path) != want["sha256"]:
            raise CorruptCheckpointError(step, path, "contents changed since it was saved")


def _check_param_shapes(step_dir: str, step: int, abstract_params: Any) -> None:
    """Names every parameter whose saved shape differs from the model's (Orbax would only
    say that some array does not fit). The usual cause is another vocabulary."""
    with _naming_the_step(step, step_dir):
        metadata = ocp.PyTreeCheckpointer().metadata(os.path.join(step_dir, "state"))
    saved = metadata.item_metadata.tree.get("params", {})
    saved_shapes = {
        jax.tree_util.keystr(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(saved)
    }
    mismatches = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
        name = jax.tree_util.keystr(path)
        if name in saved_shapes and saved_shapes[name] != tuple(leaf.shape):
            mismatches.append(f"{name} saved {saved_shapes[name]}, model {tuple(leaf.shape)}")
    if mismatches:
        raise ValueError(
            f"checkpoint step {step} at {step_dir} does not fit this model: "
            f"{_first_five(mismatches, '; ')}. A "
            "differing token_embedder/logits dimension is the vocabulary size: the checkpoint "
            "was trained with another vocabulary than this run's VOCAB_SIZE and task; use the "
            "checkpoint's vocabulary (and VOCAB_SIZE) or another checkpoint. Other dimensions "
            "mean another model size."
        )


def _first_five(items: list[str], separator: str) -> str:
    return separator.join(items[:5]) + (" ..." if len(items) > 5 else "")


def _file_digests(step_dir: str) -> dict[str, dict]:
    digests = {}
    for item in _ITEMS:
        for root, _, names in os.walk(os.path.join(step_dir, item)):
            for name in names:
                path = os.path.join(root, name)
                digests[os.path.relpath(path, step_dir)] = {
                    "bytes": os.path.getsize(path),
                    "sha256": _sha256(path),
                }
    return digests


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def _naming_the_step(step: int, step_dir: str):
    """Re-raises Orbax's read errors (say, a truncated file of an unverified step) with the
    step and its directory."""
    try:
        yield
    except CorruptCheckpointError:
        raise
    except Exception as error:
        raise RuntimeError(
            f"reading checkpoint step {step} from {step_dir} failed: "
            f"{type(error).__name__}: {error}"
        ) from error


def _is_out_of_space(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in _OUT_OF_SPACE:
            return True
        if any(text in str(error) for text in _OUT_OF_SPACE_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False
