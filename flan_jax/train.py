"""Gin-configured finetuning: `python -m flan_jax.train --gin_file=gin/runs/demo.gin`.

Resumes from the latest checkpoint in MODEL_DIR; otherwise starts from
INITIAL_CHECKPOINT_PATH (parameters only) or from scratch.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import signal
import sys
from typing import Callable, Mapping, Sequence

import gin
import jax
import optax

from flan_jax import checkpoints, data, evaluation, flops, gin_utils, optim, partitioning
from flan_jax import report, summaries
from flan_jax.trainer import TrainState, Trainer


def _run_identity(mixture_or_task_name, task_feature_lengths, batch_size, seed) -> dict:
    """What must match for a checkpoint's data position to mean the same batches."""
    return {
        "mixture_or_task_name": mixture_or_task_name,
        "task_feature_lengths": dict(task_feature_lengths),
        "batch_size": batch_size,
        "seed": seed,
    }


NONFINITE_POLICIES = ("stop", "skip")


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
    eval_suites: Sequence[str] = (),
    eval_suites_every: int | None = None,
    eval_suites_num_examples: int | None = 8,
    nonfinite: str = "stop",
    checkpoint_fallback: bool = False,
    length_check_examples: int = 100,
) -> tuple[TrainState, dict]:
    """Trains to `train_steps`; returns the final state and the decode-and-score results by step.

    `predict_eval` decodes each task's `eval_split` before and after training; `eval_every`
    measures its teacher-forced loss and token accuracy every that many steps.
    `eval_suites` (mixtures, e.g. the benchmark suites of `tasks.eval`) are decoded and scored
    on `eval_suites_num_examples` examples per task every `eval_suites_every` steps, and
    logged under benchmarks/ in TensorBoard.
    `nonfinite` is what a NaN/inf loss, gradient or update does: 'stop' raises naming the
    step (nothing of it is saved), 'skip' drops that batch's update and goes on.
    `checkpoint_fallback` resumes from the newest intact checkpoint when the latest is
    corrupt. `length_check_examples` examples of each task are checked for truncation.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"NONFINITE={nonfinite!r} must be one of {NONFINITE_POLICIES}.")
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
    data.check_vocabulary(mixture_or_task_name, model.config.vocab_size)
    if length_check_examples:
        truncation = data.check_lengths(
            mixture_or_task_name, task_feature_lengths, examples_per_task=length_check_examples
        )
        if truncation:
            print(truncation, flush=True)

    trainer = Trainer(
        model,
        optimizer_fn(learning_rate_fn),
        partitioner,
        learning_rate_fn=learning_rate_fn,
        num_microbatches=num_microbatches,
        seed=seed,
        skip_nonfinite=nonfinite == "skip",
    )
    checkpointer = checkpoints.Checkpointer(model_dir, max_to_keep=keep_checkpoints)
    state = _initial_state(
        trainer, checkpointer, identity, initial_checkpoint_path, seed, checkpoint_fallback
    )
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

    suite_evaluator = None
    if eval_suites and eval_suites_every:
        suite_evaluator = evaluation.SuiteEvaluator(
            eval_suites,
            {suite: task_feature_lengths for suite in eval_suites},
            model,
            partitioner,
            trainer.params_shardings,
            batch_size=eval_batch_size or batch_size,
            split="test",
            num_examples=eval_suites_num_examples,
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
    skipped = []  # steps whose non-finite update NONFINITE='skip' dropped

    def check_finite(checked_step, checked_metrics):
        if not float(checked_metrics["finite"]):
            _handle_nonfinite(checked_step, checked_metrics, nonfinite, checkpointer, skipped)

    unchecked = None  # the newest step whose `finite` flag has not been read yet
    try:
        for batch in data.global_batches(dataset, partitioner):
            if step >= train_steps:
                break
            state, metrics = trainer.train_step(state, batch)
            step += 1
            # Reading a step's flag waits for it: read the previous step's, so the host
            # queues each step while the one before runs. A state is checked before saving.
            if unchecked:
                check_finite(*unchecked)
            unchecked = (step, metrics)
            if progress.should_log(step):
                progress.train(step, metrics)
            if teacher_forced and (step % eval_every == 0 or step == train_steps):
                for task, values in teacher_forced.evaluate(state.params).items():
                    progress.scalars(f"eval/{task}", step, values)
                    shown = "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in values.items())
                    print(f"  eval {task}: {shown}", flush=True)
            if suite_evaluator and (step % eval_suites_every == 0 or step == train_steps):
                _log_benchmarks(progress, step, suite_evaluator.evaluate(state.params, step=step))
            if preemption.requested or step % checkpoint_every == 0 or step == train_steps:
                check_finite(step, metrics)
                unchecked = None
            if preemption.requested:
                checkpointer.save(step, state, {**identity, "step": step}, force=True)
                print(f"checkpoint at step {step} saved after SIGTERM; exiting.", flush=True)
                break
            if step % checkpoint_every == 0 or step == train_steps:
                checkpointer.save(step, state, {**identity, "step": step}, force=True)
        else:
            if step < train_steps:
                raise RuntimeError(
                    f"the data of {mixture_or_task_name!r} ran out after {step} of {train_steps} "
                    "steps; the training split is empty or smaller than one batch of "
                    f"{batch_size}: check its data source."
                )
    finally:
        preemption.restore()
        checkpointer.wait_until_finished()
        checkpointer.close()

    if skipped:
        print(
            f"NONFINITE='skip' dropped the updates of {len(skipped)} steps: {skipped}",
            flush=True,
        )
    if evaluator is not None and step > start_step:
        evaluate(step)
        print(evaluation.format_table(results), flush=True)
    progress.close()
    return state, results


def _log_benchmarks(progress, step, results) -> None:
    """Each suite's score and task metrics to TensorBoard (benchmarks/<suite>) and stdout."""
    for name, values in report.summary_scalars(results).items():
        progress.scalars(name, step, values)
        headline = values.get("score", values.get("normalized_average"))
        print(f"  {name}: {headline:.1f}", flush=True)


class NonFiniteLossError(FloatingPointError):
    """The loss, gradients or update of a step were NaN or infinite under NONFINITE='stop'."""


def _handle_nonfinite(step, metrics, policy, checkpointer, skipped: list[int]) -> None:
    """NONFINITE='skip': the trainer already dropped the update; record and say so.
    'stop': raise before anything of this state can be saved."""
    values = f"loss {float(metrics['loss'])}, grad_norm {float(metrics['grad_norm'])}"
    if policy == "skip":
        skipped.append(step)
        print(
            f"step {step}: non-finite loss, gradients or update ({values}); batch skipped, "
            f"parameters unchanged ({len(skipped)} skipped so far)",
            flush=True,
        )
        return
    checkpointer.wait_until_finished()
    latest = checkpointer.latest_step()
    kept = "no checkpoint was saved yet" if latest is None else (
        f"the last checkpoint, step {latest} in {checkpointer.directory}, is intact"
    )
    raise NonFiniteLossError(
        f"step {step}: the loss, gradients or update is NaN or infinite ({values}). Stopped "
        f"without saving this state; {kept}. Lower LEARNING_RATE or check the data, or set "
        "--gin.NONFINITE=\"'skip'\" to skip such batches."
    )


def _initial_state(
    trainer, checkpointer, identity, initial_checkpoint_path, seed, checkpoint_fallback
) -> TrainState:
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state = checkpointer.restore(
            trainer.abstract_state, fallback=checkpoint_fallback
        )
        latest = int(state.step)
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
    try:
        gin.get_configurable(train)()
    except checkpoints.CheckpointWriteError as e:
        # One write, so Orbax's background threads, still failing, cannot split the message.
        raise SystemExit(f"CheckpointWriteError: {e}") from None


if __name__ == "__main__":
    # Gin binds `flan_jax.train.train`; run that module's copy, not this `__main__` one.
    from flan_jax import train as train_module

    train_module.main()
