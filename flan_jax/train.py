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

import dataclasses
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

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
    """Trains `train_steps` steps past the initial step (0, or INITIAL_CHECKPOINT_PATH's when
    its train state is continued); returns the final state and the decode-and-score results
    by step. The arguments are the macros of gin/runs/finetune.gin, described there."""
    run = build_run(types.SimpleNamespace(**locals()))
    try:
        state = train_loop.run(
            run.trainer.train_step,
            run.state,
            run.batches,
            start_step=run.start_step,
            last_step=run.last_step,
            hooks=run.hooks,
        )
    except train_loop.DataExhaustedError as e:
        raise RuntimeError(
            f"the data of {mixture_or_task_name!r} ran out after step {e.step} of "
            f"{run.last_step}; the training split is empty or smaller than one batch of "
            f"{batch_size}: check its data source."
        ) from None
    finally:
        run.inputs.close()  # Grain's worker processes, if any
    return state, run.prediction.results if run.prediction else {}


@dataclasses.dataclass
class Run:
    """A run ready to loop: the loop runs `trainer.train_step` on `batches` from `state` at
    `start_step` to `last_step` with `hooks`; `prediction` is the decode-and-score hook, if
    asked for, and `inputs` closes after the loop."""

    trainer: Trainer
    state: TrainState
    inputs: Any  # data.StreamingBatches or the Grain input: `get_state`, `close`
    batches: Iterator
    start_step: int
    last_step: int
    hooks: list[train_loop.Hook]
    prediction: hooks.PredictionEval | None


def build_run(a) -> Run:
    """`train`'s arguments `a`, checked, as a run: the Trainer, the state it starts from (a
    resume, INITIAL_CHECKPOINT_PATH or fresh), the input at that state's position, the hooks.
    Everything the user gave is read once here, before anything is compiled."""
    _check(a)
    checkpointer = checkpoints.Checkpointer(a.model_dir, max_to_keep=a.keep_checkpoints)
    trainer = Trainer(
        a.model,
        a.optimizer_fn(a.learning_rate_fn),
        a.partitioner,
        learning_rate_fn=a.learning_rate_fn,
        num_microbatches=a.num_microbatches,
        loss_normalizing_factor=a.loss_normalizing_factor,
        seed=a.seed,
        nonfinite=a.nonfinite,
    )
    identity = _run_identity(a)
    state, data_state, initial_step = _initial_state(trainer, checkpointer, identity, a)
    start_step, last_step = int(state.step), initial_step + a.train_steps
    _print_start(a, start_step, initial_step, last_step)
    inputs = _train_input(a)
    # The input has given one batch for each step since the initial one.
    data.restore_position(inputs, start_step - initial_step, data_state.get("input"))

    def data_state_at(step):  # called after exactly `step` batches: the loop reads none ahead
        return {**identity, "step": step, "initial_step": initial_step, "input": inputs.get_state()}

    writer = _progress_writer(a, start_step, last_step)
    periodic_evals, prediction = _evaluation_hooks(trainer, writer, a)
    run_hooks = [
        hooks.NonFinite(trainer.nonfinite, checkpointer),
        hooks.Progress(writer, a.log_every),
        *periodic_evals,
        hooks.Preemption(),
        hooks.Checkpoint(checkpointer, a.checkpoint_every, data_state_at),
        *([prediction] if prediction else []),
    ]
    batches = data.global_batches(inputs, a.partitioner)
    return Run(trainer, state, inputs, batches, start_step, last_step, run_hooks, prediction)


def _check(a) -> None:
    """Checks the arguments: their paths (replaced in `a` by the checked ones), the inputs,
    vocabulary, feature lengths and batch size against the model and mesh; writes config.gin
    to MODEL_DIR."""
    if a.initial_checkpoint_restore not in RESTORE_CHOICES:
        raise ValueError(
            f"INITIAL_CHECKPOINT_RESTORE={a.initial_checkpoint_restore!r} must be one of "
            f"{RESTORE_CHOICES}"
        )
    a.model_dir = paths.path(a.model_dir, "MODEL_DIR")
    if a.cache_dir is not None:
        a.cache_dir = os.fspath(paths.path(a.cache_dir, "CACHE_DIR"))
    if a.initial_checkpoint_path:
        a.initial_checkpoint_path = os.fspath(
            paths.path(a.initial_checkpoint_path, "INITIAL_CHECKPOINT_PATH")
        )
    # Data, vocabularies and CACHE_DIR read once, before anything is written or compiled.
    preflight.check_inputs(a.mixture_or_task_name, a.cache_dir)
    _write_config(a.model_dir)
    a.partitioner.check_batch_size(a.batch_size)
    _print_devices(a.partitioner)
    data.check_vocabulary(a.mixture_or_task_name, a.model.config.vocab_size)
    a.model.check_feature_lengths(a.task_feature_lengths)
    if a.cache_dir is None:  # the cache counts truncation over every example as it is built
        _warn_truncation(a.mixture_or_task_name, a.task_feature_lengths, a.length_check_examples)


def _print_start(a, start_step, initial_step, last_step) -> None:
    counted = f" (TRAIN_STEPS={a.train_steps} from step {initial_step})" if initial_step else ""
    print(
        f"model_dir {a.model_dir}: starting at step {start_step} of {last_step}{counted}",
        flush=True,
    )
    if 0 < initial_step <= a.train_steps:
        print(
            f"note: TRAIN_STEPS={a.train_steps} counts this run's steps, so it ends at "
            f"{last_step}; where T5X's gin would say TRAIN_STEPS = {initial_step} + N, pass N",
            flush=True,
        )


def _progress_writer(a, start_step, last_step) -> summaries.ProgressWriter:
    lengths = a.task_feature_lengths
    return summaries.ProgressWriter(
        a.model_dir,
        total_steps=last_step,
        start_step=start_step,
        tokens_per_step=a.batch_size * sum(lengths.values()),
        flops_per_step=a.batch_size * flops.train_flops_per_sequence(a.model.config, lengths),
        peak_flops=flops.peak_flops(a.peak_flops_per_device),
    )


def _train_input(a):
    """The global batches from the task cache (Grain) when there is one, else streamed
    through seqio; either has `get_state` (None when streaming)."""
    task = (a.mixture_or_task_name, a.task_feature_lengths, a.model)
    batching = {"global_batch_size": a.batch_size, "seed": a.seed}
    if a.cache_dir is None:
        return data.StreamingBatches(data.train_dataset(*task, **batching))
    from flan_jax import input_pipeline  # Grain: imported only by runs that read a cache

    inputs = input_pipeline.train_input(
        *task, cache_dir=a.cache_dir, worker_count=a.input_workers, **batching
    )
    if inputs.truncation:
        print(inputs.truncation, flush=True)
    return inputs


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
    trainer, writer, a
) -> tuple[list[train_loop.Hook], hooks.PredictionEval | None]:
    """The periodic evaluations (teacher-forced, suites) and the decode-and-score of
    EVAL_SPLIT before and after training, each only when asked for."""
    name, lengths, split = a.mixture_or_task_name, a.task_feature_lengths, a.eval_split
    batch_size, num_examples = a.eval_batch_size or a.batch_size, a.eval_num_examples
    suites = a.eval_suites if a.eval_suites_every else ()
    t = trainer
    periodic = []
    if a.eval_every:
        evaluator = evaluation.TeacherForcedEvaluator(
            name,
            lengths,
            t.model,
            t,
            batch_size=batch_size,
            split=split,
            num_examples=num_examples,
        )
        periodic.append(hooks.TeacherForcedEval(evaluator, writer, a.eval_every))
    if suites:
        evaluator = evaluation.SuiteEvaluator(
            suites,
            {suite: lengths for suite in suites},
            t.model,
            t.partitioner,
            t.params_shardings,
            batch_size=batch_size,
            split="test",
            num_examples=a.eval_suites_num_examples,
        )
        periodic.append(hooks.SuiteEval(evaluator, writer, a.eval_suites_every))
    if not a.predict_eval:
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


def _run_identity(a):
    """What must match for a checkpoint's data position to mean the same batches. The input
    path is part of it: the cache (Grain) and seqio streaming shuffle, mix and pack
    differently, so the same seed gives other batches on the other path. Where the cache
    lives is not: a copy of it (say, moved to local disk) holds the same examples, and the
    cache's fingerprint check refuses one made differently."""
    return {
        "mixture_or_task_name": a.mixture_or_task_name,
        "task_feature_lengths": dict(a.task_feature_lengths),
        "batch_size": a.batch_size,
        "seed": a.seed,
        "input_path": "seqio streaming" if a.cache_dir is None else "task cache",
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


def _initial_state(trainer, checkpointer, identity, a) -> tuple[TrainState, dict, int]:
    """The resume policy: the latest checkpoint of MODEL_DIR (of the same run), else
    INITIAL_CHECKPOINT_PATH's train state (INITIAL_CHECKPOINT_RESTORE='train_state', when it
    has one) or parameters, else fresh parameters from SEED. Returns the state, the checkpoint's
    data item (empty when not resuming) and the run's initial step, which a resume reads
    from the checkpoint (0 in those saved before it was recorded)."""
    latest = checkpointer.latest_step()
    if latest is not None:
        state, data_state = checkpointer.restore(
            trainer.abstract_state, fallback=a.checkpoint_fallback
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
    if a.initial_checkpoint_path:
        state = _pretrained_state(trainer, a.initial_checkpoint_path, a.initial_checkpoint_restore)
        return state, {}, int(state.step)
    return trainer.create_state(jax.random.key(a.seed)), {}, 0


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
