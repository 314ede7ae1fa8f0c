"""Gin-configured finetuning: `python -m flan_jax.train --gin_file=gin/runs/demo.gin`.

Resumes from the latest checkpoint in MODEL_DIR; otherwise starts from
INITIAL_CHECKPOINT_PATH (parameters only) or from scratch.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import signal
import sys
from typing import Callable, Mapping

import gin
import jax
import optax

from flan_jax import checkpoints, data, evaluation, flops, gin_utils, optim, partitioning, summaries
from flan_jax.trainer import TrainState, Trainer


def _run_identity(mixture_or_task_name, task_feature_lengths, batch_size, seed) -> dict:
    """What must match for a checkpoint's data position to mean the same batches."""
    return {
        "mixture_or_task_name": mixture_or_task_name,
        "task_feature_lengths": dict(task_feature_lengths),
        "batch_size": batch_size,
        "seed": seed,
    }


class _Preemption:
    """Turns SIGTERM (a TPU preemption notice) into a request to checkpoint and stop."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        print("SIGTERM received: saving a checkpoint and exiting.", flush=True)
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def train(
    *,
    model,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
    train_steps: int,
    model_dir: str,
    learning_rate_fn: optax.Schedule,
    partitioner: partitioning.Partitioner,
    optimizer_fn: Callable[[optax.Schedule], optax.GradientTransformation] = optim.adafactor,
    num_microbatches: int = 1,
    seed: int = 0,
    initial_checkpoint_path: str | None = None,
    checkpoint_every: int = 1000,
    keep_checkpoints: int | None = 3,
    log_every: int = 100,
    eval_split: str = "validation",
    eval_num_examples: int | None = None,
    eval_batch_size: int | None = None,
    eval_every: int | None = None,
    predict_eval: bool = True,
    peak_flops_per_device: float | None = None,
) -> tuple[TrainState, dict]:
    """Trains to `train_steps`; returns the final state and the decode-and-score results by step.

    `predict_eval` decodes each task's `eval_split` before and after training; `eval_every`
    measures its teacher-forced loss and token accuracy every that many steps.
    """
    model_dir = os.path.abspath(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(model_dir, "config.gin"), "w") as f:
            f.write(gin.config_str())
    partitioner.check_batch_size(batch_size)
    print(
        f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
        f"of {jax.device_count()} devices, mesh {dict(partitioner.mesh.shape)}",
        flush=True,
    )
    identity = _run_identity(mixture_or_task_name, task_feature_lengths, batch_size, seed)
    data.get_mixture_or_task(mixture_or_task_name)

    trainer = Trainer(
        model,
        optimizer_fn(learning_rate_fn),
        partitioner,
        learning_rate_fn=learning_rate_fn,
        num_microbatches=num_microbatches,
        seed=seed,
    )
    checkpointer = checkpoints.Checkpointer(model_dir, max_to_keep=keep_checkpoints)
    state = _initial_state(trainer, checkpointer, identity, initial_checkpoint_path, seed)
    start_step = int(state.step)
    print(f"model_dir {model_dir}: starting at step {start_step} of {train_steps}", flush=True)

    progress = summaries.ProgressWriter(
        model_dir,
        total_steps=train_steps,
        start_step=start_step,
        tokens_per_step=batch_size * sum(task_feature_lengths.values()),
        flops_per_step=batch_size * flops.train_flops_per_sequence(model.config, task_feature_lengths),
        peak_flops=flops.peak_flops(peak_flops_per_device),
        log_every=log_every,
    )
    evaluator = None
    results = {}

    def evaluate(step):
        results[f"step {step}"] = evaluator.evaluate(state.params, step=step)
        for task, values in results[f"step {step}"].items():
            progress.scalars(f"eval/{task}", step, values)

    if predict_eval:
        evaluator = evaluation.PredictionEvaluator(
            mixture_or_task_name,
            task_feature_lengths,
            model,
            partitioner,
            trainer.params_shardings,
            batch_size=eval_batch_size or batch_size,
            split=eval_split,
            num_examples=eval_num_examples,
        )
        evaluate(start_step)

    teacher_forced = None
    if eval_every:
        teacher_forced = evaluation.TeacherForcedEvaluator(
            mixture_or_task_name,
            task_feature_lengths,
            model,
            trainer,
            batch_size=eval_batch_size or batch_size,
            split=eval_split,
            num_examples=eval_num_examples,
        )

    dataset = data.train_dataset(
        mixture_or_task_name,
        task_feature_lengths,
        model,
        global_batch_size=batch_size,
        seed=seed,
        start_step=start_step,
    )
    preemption = _Preemption()
    step = start_step
    try:
        for batch in data.global_batches(dataset, partitioner):
            if step >= train_steps:
                break
            state, metrics = trainer.train_step(state, batch)
            step += 1
            if progress.should_log(step):
                progress.train(step, metrics)
            if teacher_forced and (step % eval_every == 0 or step == train_steps):
                for task, values in teacher_forced.evaluate(state.params).items():
                    progress.scalars(f"eval/{task}", step, values)
                    shown = "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in values.items())
                    print(f"  eval {task}: {shown}", flush=True)
            if preemption.requested:
                checkpointer.save(step, state, {**identity, "step": step}, force=True)
                print(f"checkpoint at step {step} saved after SIGTERM; exiting.", flush=True)
                break
            if step % checkpoint_every == 0 or step == train_steps:
                checkpointer.save(step, state, {**identity, "step": step}, force=True)
    finally:
        preemption.restore()
        checkpointer.wait_until_finished()
        checkpointer.close()

    if evaluator is not None and step > start_step:
        evaluate(step)
        print(evaluation.format_table(results), flush=True)
    progress.close()
    return state, results


def _initial_state(trainer, checkpointer, identity, initial_checkpoint_path, seed) -> TrainState:
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state = checkpointer.restore(trainer.abstract_state, latest)
        saved = {k: data_state.get(k) for k in identity}
        if saved != identity:
            raise ValueError(
                f"MODEL_DIR {os.path.dirname(checkpointer.directory)} holds a run with {saved}, "
                f"but this run asks for {identity}. Resuming would feed different batches: use a "
                "new MODEL_DIR, or pass the old one as INITIAL_CHECKPOINT_PATH to finetune from it."
            )
        print(f"resuming from checkpoint step {latest}", flush=True)
        return state
    if initial_checkpoint_path:
        params = checkpoints.restore_params(
            initial_checkpoint_path, trainer.abstract_state.params
        )
        print(f"initialized parameters from {initial_checkpoint_path}", flush=True)
        return trainer.state_from_params(params)
    return trainer.create_state(jax.random.key(seed))


def main(argv=None) -> None:
    gin_utils.parse(sys.argv[1:] if argv is None else argv, description=__doc__)
    # The run files bind every argument of `flan_jax.train.train` (dynamic registration).
    gin.get_configurable(train)()


if __name__ == "__main__":
    # Gin binds `flan_jax.train.train`; run that module's copy, not this `__main__` one.
    from flan_jax import train as train_module

    train_module.main()
