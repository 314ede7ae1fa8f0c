"""Orbax checkpoints: train state plus the input pipeline's position, saved together."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Async, keep-N checkpoints of a TrainState in `<model_dir>/checkpoints/<step>`.

    Each step holds two items: `state` (params, optimizer state, step; sharded arrays)
    and `data` (JSON: where the input pipeline stands), so a resumed run sees exactly the
    batches an uninterrupted one would. Orbax writes into a temporary directory and renames
    it when complete, so a crash mid-save never leaves a checkpoint that looks finished.
    """

    def __init__(self, model_dir: str, *, max_to_keep: int | None = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        return self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
            force=force,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores onto `abstract_state`'s shardings (which may differ from the saved ones)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}.")
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        log.info("restored step %d from %s", step, self.directory)
        return restored.state, dict(restored.data)

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def restore_params(path: str, abstract_params: Any) -> Any:
    """Parameters alone from a flan_jax checkpoint directory, for finetuning from it.

    `path` is a step directory (`.../checkpoints/1000`) or a model dir / checkpoints dir,
    whose latest step is used.
    """
    path = os.path.abspath(path)
    step_dir = _resolve_step_dir(path)
    restored = _restore_subtree(os.path.join(step_dir, "state"), {"params": abstract_params})
    # A partial restore leaves what the checkpoint lacks as the abstract leaf it was asked for.
    missing = [
        jax.tree_util.keystr(key_path)
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(restored["params"])
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"checkpoint {step_dir} has no parameters {shown}; it was written for another "
            "model config: check the layer counts and scan_layers "
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
