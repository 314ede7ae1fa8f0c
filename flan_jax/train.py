"""Gin-configured finetuning: `python -m flan_jax.train --gin_file=gin/runs/demo.gin`.

Resumes from the latest checkpoint in MODEL_DIR; otherwise starts from INITIAL_CHECKPOINT_PATH
(its parameters, optimizer state and step when it has them, as T5X continues a checkpoint;
its parameters alone with INITIAL_CHECKPOINT_RESTORE = 'params') or from scratch. TRAIN_STEPS
counts the steps of this run from the step it starts at: from the LM-adapted T5 checkpoint's
step 1,100,000, Flan-T5-XL's 38,000 end at 1,138,000. Reads the task cache in CACHE_DIR
(`python -m flan_jax.cache_tasks`) through Grain, whose saved position resumes in constant
time, or, with CACHE_DIR = None, streams the tasks through seqio and replays on resume.
"""

from __future__ import annotations

from flan_jax import allocator

if __name__ == "__main__":  # before numpy, TF or jax start threads that keep their own arenas
    allocator.configure()

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Callable, Mapping, Sequence

import gin
import jax
import optax

from flan_jax import (
    checkpoints,
    cli,
    data,
    evaluation,
    flops,
    hooks,
    model_loader,
    optim,
    partitioning,
    paths,
    preflight,
    summaries,
    train_loop,
)
from flan_jax.trainer import Trainer, TrainState


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
    loss_normalizing_factor: None | float | str = "NUM_REAL_TARGET_TOKENS",
    seed: int = 0,
    initial_checkpoint_path: str | None = None,
    initial_checkpoint_restore: str = "train_state",
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
    cache_dir: str | None = None,
    input_workers: int = 0,
) -> tuple[TrainState, dict]:
    """Trains `train_steps` steps past the initial step; returns the final state and the
    decode-and-score results by step.

    The initial step is 0, or the step of INITIAL_CHECKPOINT_PATH's train state when
    `initial_checkpoint_restore` is 'train_state' and the checkpoint has one ('params': its
    parameters alone, fresh optimizer state, step 0). Every checkpoint records it, so a
    resume from MODEL_DIR ends at the same step. Checkpoint and evaluation periods are
    multiples of the step number, as T5X numbers them; the learning-rate schedule counts
    this run's steps (`Trainer.continued`).

    `predict_eval` decodes each task's `eval_split` before and after training; `eval_every`
    measures its teacher-forced loss and token accuracy every that many steps.
    `eval_suites` (mixtures, e.g. the benchmark suites of `tasks.eval`) are decoded and scored
    on `eval_suites_num_examples` examples per task every `eval_suites_every` steps, and
    logged under benchmarks/ in TensorBoard.
    `nonfinite` is what a NaN/inf loss, gradient or update does: 'stop' raises naming the
    step (nothing of it is saved), 'skip' drops that batch's update and goes on.
    `checkpoint_fallback` resumes from the newest intact checkpoint when the latest is
    corrupt. `length_check_examples` examples of each task are checked for truncation.
    `cache_dir` holds the cached tasks to train on (None: stream them through seqio);
    `input_workers` is the number of Grain worker processes reading it.
    `loss_normalizing_factor` divides the summed loss as T5X's does (`Trainer`).
    """
    if initial_checkpoint_restore not in RESTORE_CHOICES:
        raise ValueError(
            f"INITIAL_CHECKPOINT_RESTORE={initial_checkpoint_restore!r} must be one of "
            f"{RESTORE_CHOICES}"
        )
    model_dir = paths.path(model_dir, "MODEL_DIR")
    if cache_dir is not None:
        cache_dir = os.fspath(paths.path(cache_dir, "CACHE_DIR"))
    if initial_checkpoint_path:
        initial_checkpoint_path = os.fspath(
            paths.path(initial_checkpoint_path, "INITIAL_CHECKPOINT_PATH")
        )
    # Data, vocabularies and CACHE_DIR read once, before anything is written or compiled.
    preflight.check_inputs(mixture_or_task_name, cache_dir)
    _write_config(model_dir)
    partitioner.check_batch_size(batch_size)
    _print_devices(partitioner)
    data.check_vocabulary(mixture_or_task_name, model.config.vocab_size)
    model.check_feature_lengths(task_feature_lengths)
    if cache_dir is None:  # the cache counts truncation over every example as it is built
        _warn_truncation(mixture_or_task_name, task_feature_lengths, length_check_examples)
    identity = _run_identity(
        mixture_or_task_name, task_feature_lengths, batch_size, seed, cached=cache_dir is not None
    )
    checkpointer = checkpoints.Checkpointer(model_dir, max_to_keep=keep_checkpoints)
    nonfinite_hook = hooks.NonFinite(nonfinite, checkpointer)
    trainer = Trainer(
        model,
        optimizer_fn(learning_rate_fn),
        partitioner,
        learning_rate_fn=learning_rate_fn,
        num_microbatches=num_microbatches,
        loss_normalizing_factor=loss_normalizing_factor,
        seed=seed,
        skip_nonfinite=nonfinite_hook.skip,
    )
    state, data_state, initial_step = _initial_state(
        trainer,
        checkpointer,
        identity,
        initial_checkpoint_path,
        initial_checkpoint_restore,
        seed,
        checkpoint_fallback,
    )
    start_step = int(state.step)
    last_step = initial_step + train_steps
    counted = f" (TRAIN_STEPS={train_steps} from step {initial_step})" if initial_step else ""
    print(
        f"model_dir {model_dir}: starting at step {start_step} of {last_step}{counted}", flush=True
    )
    if 0 < initial_step <= train_steps:
        print(
            f"note: TRAIN_STEPS={train_steps} counts this run's steps, so it ends at "
            f"{last_step}; where T5X's gin would say TRAIN_STEPS = {initial_step} + N, pass N",
            flush=True,
        )
    inputs = _train_input(
        mixture_or_task_name,
        task_feature_lengths,
        model,
        batch_size,
        seed,
        cache_dir,
        input_workers,
    )
    if inputs.truncation:
        print(inputs.truncation, flush=True)
    # The input has given one batch for each step since the initial one.
    data.restore_position(inputs, start_step - initial_step, data_state.get("input"))
    writer = summaries.ProgressWriter(
        model_dir,
        total_steps=last_step,
        start_step=start_step,
        tokens_per_step=batch_size * sum(task_feature_lengths.values()),
        flops_per_step=batch_size
        * flops.train_flops_per_sequence(model.config, task_feature_lengths),
        peak_flops=flops.peak_flops(peak_flops_per_device),
    )
    periodic_evals, prediction = _evaluation_hooks(
        trainer,
        writer,
        mixture_or_task_name,
        task_feature_lengths,
        batch_size=eval_batch_size or batch_size,
        split=eval_split,
        num_examples=eval_num_examples,
        every=eval_every,
        predict=predict_eval,
        suites=eval_suites if eval_suites_every else (),
        suites_every=eval_suites_every,
        suites_num_examples=eval_suites_num_examples,
    )
    run_hooks = [
        nonfinite_hook,  # first: it reads the previous step's flag before anything waits
        hooks.Progress(writer, log_every),
        *periodic_evals,
        hooks.Preemption(),  # before Checkpoint, which saves the step it stops at
        hooks.Checkpoint(
            checkpointer,
            checkpoint_every,
            # Read after exactly `step` batches: the loop takes one a step, none ahead.
            lambda step: {
                **identity,
                "step": step,
                "initial_step": initial_step,
                "input": inputs.get_state(),
            },
            before_save=nonfinite_hook.check_unread,
        ),
        *([prediction] if prediction else []),
    ]
    try:
        state = train_loop.run(
            trainer.train_step,
            state,
            data.global_batches(inputs, partitioner),
            start_step=start_step,
            last_step=last_step,
            hooks=run_hooks,
        )
    except train_loop.DataExhaustedError as e:
        raise RuntimeError(
            f"the data of {mixture_or_task_name!r} ran out after step {e.step} of {last_step}; "
            f"the training split is empty or smaller than one batch of {batch_size}: check "
            "its data source."
        ) from None
    finally:
        inputs.close()  # Grain's worker processes, if any
    return state, prediction.results if prediction else {}


def _train_input(name, lengths, model, batch_size, seed, cache_dir, workers):
    """The global batches from the task cache (Grain) when there is one, else streamed
    through seqio as before the cache existed; either has `get_state` (None when streaming)."""
    if cache_dir is None:
        return data.StreamingBatches(
            data.train_dataset(name, lengths, model, global_batch_size=batch_size, seed=seed)
        )
    from flan_jax import input_pipeline  # Grain: imported only by runs that read a cache

    return input_pipeline.train_input(
        name,
        lengths,
        model,
        cache_dir=cache_dir,
        global_batch_size=batch_size,
        seed=seed,
        worker_count=workers,
    )


def _write_config(model_dir) -> None:
    """The resolved gin config of the run, beside its checkpoints."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (model_dir / "config.gin").write_text(gin.config_str())


def _print_devices(partitioner) -> None:
    print(
        f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local "
        f"of {jax.device_count()} devices, mesh {dict(partitioner.mesh.shape)}",
        flush=True,
    )


def _warn_truncation(mixture_or_task_name, task_feature_lengths, examples_per_task) -> None:
    """Counts the examples longer than the feature lengths (seqio would cut them silently)."""
    if examples_per_task:
        truncation = data.check_lengths(
            mixture_or_task_name, task_feature_lengths, examples_per_task=examples_per_task
        )
        if truncation:
            print(truncation, flush=True)


def _evaluation_hooks(
    trainer,
    writer,
    name,
    lengths,
    *,
    batch_size,
    split,
    num_examples,
    every,
    predict,
    suites,
    suites_every,
    suites_num_examples,
) -> tuple[list[train_loop.Hook], hooks.PredictionEval | None]:
    """The periodic evaluations (teacher-forced, suites) and the decode-and-score of `split`
    before and after training, each only when asked for."""
    t = trainer
    periodic = []
    if every:
        evaluator = evaluation.TeacherForcedEvaluator(
            name,
            lengths,
            t.model,
            t,
            batch_size=batch_size,
            split=split,
            num_examples=num_examples,
        )
        periodic.append(hooks.TeacherForcedEval(evaluator, writer, every))
    if suites:
        evaluator = evaluation.SuiteEvaluator(
            suites,
            {suite: lengths for suite in suites},
            t.model,
            t.partitioner,
            t.params_shardings,
            batch_size=batch_size,
            split="test",
            num_examples=suites_num_examples,
        )
        periodic.append(hooks.SuiteEval(evaluator, writer, suites_every))
    if not predict:
        return periodic, None
    evaluator = evaluation.PredictionEvaluator(
        name,
        lengths,
        t.model,
        t.partitioner,
        t.params_shardings,
        batch_size=batch_size,
        split=split,
        num_examples=num_examples,
    )
    return periodic, hooks.PredictionEval(evaluator, writer)


def _run_identity(mixture_or_task_name, task_feature_lengths, batch_size, seed, *, cached):
    """What must match for a checkpoint's data position to mean the same batches. The input
    path is part of it: the cache (Grain) and seqio streaming shuffle, mix and pack
    differently, so the same seed gives other batches on the other path. Where the cache
    lives is not: a copy of it (say, moved to local disk) holds the same examples, and the
    cache's fingerprint check refuses one made differently."""
    return {
        "mixture_or_task_name": mixture_or_task_name,
        "task_feature_lengths": dict(task_feature_lengths),
        "batch_size": batch_size,
        "seed": seed,
        "input_path": "task cache" if cached else "seqio streaming",
    }


# What INITIAL_CHECKPOINT_RESTORE may be: the whole train state when the checkpoint has one,
# or parameters alone.
RESTORE_CHOICES = ("train_state", "params")
# Checkpoints saved before the key existed were all streamed.
_IDENTITY_DEFAULTS = {"input_path": "seqio streaming"}
_SWITCH_BACK = {
    "seqio streaming": "that run streamed its input: set CACHE_DIR = None",
    "task cache": "that run read a task cache: set CACHE_DIR to it",
}


def _initial_state(
    trainer, checkpointer, identity, initial_checkpoint_path, restore, seed, checkpoint_fallback
) -> tuple[TrainState, dict, int]:
    """The resume policy: the latest checkpoint of MODEL_DIR (of the same run), else
    INITIAL_CHECKPOINT_PATH's train state (`restore`='train_state', when it has one) or
    parameters, else fresh parameters from `seed`. Returns the state, the checkpoint's
    data item (empty when not resuming) and the run's initial step, which a resume reads
    from the checkpoint (0 in those saved before it was recorded)."""
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state = checkpointer.restore(
            trainer.abstract_state, fallback=checkpoint_fallback
        )
        latest = int(state.step)
        saved = {k: data_state.get(k, _IDENTITY_DEFAULTS.get(k)) for k in identity}
        if saved != identity:
            switched = saved["input_path"] != identity["input_path"]
            hint = f" ({_SWITCH_BACK[saved['input_path']]})" if switched else ""
            raise ValueError(
                f"MODEL_DIR {os.path.dirname(checkpointer.directory)} holds a run with {saved}, "
                f"but this run asks for {identity}. Resuming would feed different batches"
                f"{hint}: use a new MODEL_DIR, or pass the old one as "
                "INITIAL_CHECKPOINT_PATH to finetune from it."
            )
        print(f"resuming from checkpoint step {latest}", flush=True)
        return state, data_state, int(data_state.get("initial_step", 0))
    if initial_checkpoint_path:
        state = _pretrained_state(trainer, initial_checkpoint_path, restore)
        return state, {}, int(state.step)
    return trainer.create_state(jax.random.key(seed)), {}, 0


def _pretrained_state(trainer, path: str, restore: str) -> TrainState:
    """INITIAL_CHECKPOINT_PATH (a flan_jax, T5X or Hugging Face checkpoint): its train state
    to continue, or its parameters with fresh optimizer state at step 0."""
    if restore == "train_state":
        state = model_loader.restore_train_state(
            path, trainer.model, trainer.abstract_state, trainer.optimizer
        )
        if state is not None:
            print(
                f"continuing from {path} at step {int(state.step)}: parameters, optimizer "
                "state and step restored",
                flush=True,
            )
            return trainer.continued(state)
        print(f"{path} holds parameters alone: fresh optimizer state at step 0", flush=True)
    params = model_loader.restore_params(path, trainer.model, trainer.abstract_state.params)
    print(f"initialized parameters from {path}", flush=True)
    return trainer.state_from_params(params)


def main(argv=None) -> None:
    cli.parse(argv, __doc__, checkpoint_macro="INITIAL_CHECKPOINT_PATH")
    # The run files bind every argument of `flan_jax.train.train` (dynamic registration).
    try:
        gin.get_configurable(train)()
    except preflight.InputsUnreadable as e:
        raise SystemExit(str(e)) from None
    except checkpoints.CheckpointWriteError as e:
        # One write, so Orbax's background threads, still failing, cannot split the message.
        raise SystemExit(f"CheckpointWriteError: {e}") from None


if __name__ == "__main__":
    # Gin binds `flan_jax.train.train`; run that module's copy, not this `__main__` one.
    from flan_jax import train as train_module

    train_module.main()
