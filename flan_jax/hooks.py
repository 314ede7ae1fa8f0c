"""The jobs of a training run around `train_loop.run`, one hook each: the non-finite policy,
progress, evaluation, preemption and checkpoints."""

from __future__ import annotations

import signal
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax import checkpoints, evaluation, report, summaries
from flan_jax.train_loop import Hook, Step
from flan_jax.trainer import check_nonfinite_policy


class NonFiniteLossError(FloatingPointError):
    """The loss, gradients or update of a step were NaN or infinite under NONFINITE='stop'."""


class NonFinite(Hook):
    """Reports the steps whose replicated `finite` flag is 0: under NONFINITE='stop' raises
    before anything of that state can be saved; under 'skip' (the Trainer dropped the
    update) records the step and goes on.

    Reading a step's flag waits for the step: the hook reads the previous step's, so the host
    queues each step while the one before runs, and defers the newest one's to `Step.settle`
    (a checkpoint settles the step before saving it).
    """

    def __init__(self, policy: str, checkpointer: checkpoints.Checkpointer):
        self.skip = check_nonfinite_policy(policy) == "skip"
        self.skipped: list[int] = []  # steps whose update was dropped
        self._checkpointer = checkpointer
        self._unread = None  # (step, metrics) of the newest step whose flag was not read

    def after_step(self, step: Step) -> None:
        self.check_unread()
        self._unread = (step.number, step.metrics)
        step.deferred.append(self.check_unread)

    def check_unread(self) -> None:
        if self._unread is not None:
            number, metrics = self._unread
            self._unread = None
            if not float(metrics["finite"]):
                self._handle(number, metrics)

    def end(self, step: Step) -> None:
        self.check_unread()
        if self.skipped:
            print(
                f"NONFINITE='skip' dropped the updates of {len(self.skipped)} steps: "
                f"{self.skipped}",
                flush=True,
            )

    def _handle(self, number: int, metrics) -> None:
        values = f"loss {float(metrics['loss'])}, grad_norm {float(metrics['grad_norm'])}"
        if self.skip:
            self.skipped.append(number)
            print(
                f"step {number}: non-finite loss, gradients or update ({values}); batch "
                f"skipped, parameters unchanged ({len(self.skipped)} skipped so far)",
                flush=True,
            )
            return
        self._checkpointer.wait_until_finished()
        latest = self._checkpointer.latest_step()
        kept = (
            "no checkpoint was saved yet"
            if latest is None
            else (
                f"the last checkpoint, step {latest} in {self._checkpointer.directory}, is intact"
            )
        )
        raise NonFiniteLossError(
            f"step {number}: the loss, gradients or update is NaN or infinite ({values}). "
            f"Stopped without saving this state; {kept}. Lower LEARNING_RATE or check the "
            "data, or set --gin.NONFINITE=\"'skip'\" to skip such batches."
        )


class Progress(Hook):
    """The console progress line and TensorBoard's train/ scalars every `every` steps and at
    the last; closes the writer, which the evaluation hooks also write to, at the end."""

    after = (NonFinite,)  # a NaN step stops the run before its line is logged

    def __init__(self, writer: summaries.ProgressWriter, every: int):
        self.writer, self.every = writer, max(1, every)

    def after_step(self, step: Step) -> None:
        if step.every(self.every):
            self.writer.train(step.number, step.metrics)

    def close(self) -> None:
        self.writer.close()


class TeacherForcedEval(Hook):
    """Each task's teacher-forced loss and token accuracy every `every` steps and at the last,
    printed and logged under eval/<task>."""

    after = (NonFinite,)  # parameters known finite

    def __init__(self, evaluator, writer: summaries.ProgressWriter, every: int):
        self.evaluator, self.writer, self.every = evaluator, writer, every

    def after_step(self, step: Step) -> None:
        if not step.every(self.every):
            return
        for task, values in self.evaluator.evaluate(step.state.params).items():
            self.writer.scalars(f"eval/{task}", step.number, values)
            shown = "  ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in values.items())
            print(f"  eval {task}: {shown}", flush=True)


class SuiteEval(Hook):
    """The benchmark suites decoded and scored every `every` steps and at the last: each
    suite's headline printed, its score and task metrics logged under benchmarks/<suite>."""

    after = (NonFinite,)  # parameters known finite

    def __init__(self, evaluator, writer: summaries.ProgressWriter, every: int):
        self.evaluator, self.writer, self.every = evaluator, writer, every

    def after_step(self, step: Step) -> None:
        if not step.every(self.every):
            return
        results = self.evaluator.evaluate(step.state.params, step=step.number)
        for name, values in report.summary_scalars(results).items():
            self.writer.scalars(name, step.number, values)
            headline = values.get("score", values.get("normalized_average"))
            print(f"  {name}: {headline:.1f}", flush=True)
        for note in report.truncation_notes(self.evaluator.truncated()):
            print(f"  {note}", flush=True)


class PredictionEval(Hook):
    """Each task decoded and scored before the first step and after the last (if any step
    ran), logged under eval/<task>; the table of both is printed at the end. `results` maps
    "step N" to the task metrics."""

    after = (NonFinite,)  # its `end` decodes the final state once that is known finite

    def __init__(self, evaluator, writer: summaries.ProgressWriter):
        self.evaluator, self.writer = evaluator, writer
        self.results: dict[str, evaluation.TaskMetrics] = {}
        self._start = None

    def begin(self, step: Step) -> None:
        self._start = step.number
        self._evaluate(step)

    def end(self, step: Step) -> None:
        if step.number > self._start:
            self._evaluate(step)
            print(evaluation.format_table(self.results), flush=True)

    def _evaluate(self, step: Step) -> None:
        results = self.evaluator.evaluate(step.state.params, step=step.number)
        self.results[f"step {step.number}"] = results
        for task, values in results.items():
            self.writer.scalars(f"eval/{task}", step.number, values)


class Preemption(Hook):
    """Turns SIGTERM (a TPU preemption notice) into a stop that every process takes after the
    same step, which the Checkpoint hook then saves. The handler is in place from `begin` to
    `end`: a SIGTERM during the final evaluation ends the process as usual.

    A notice reaches the hosts of a slice at different moments (`stop.sh` reaches them over
    ssh one by one, a maintenance event need not reach every host in the same step), and a
    host that stopped alone would enter the checkpoint save while the others enter the next
    step, each waiting on a collective the other never joins. So with several processes
    each step's local flags are combined into one replicated value (`any_process`), read
    after the next step: every process reads the same value after the same step and stops
    there, one step after the notice, without waiting for the device. A single process
    stops after the step its signal arrived in.

    Other stop reasons need no agreement: the non-finite check reads the step's `finite`
    metric, which is replicated, and every process reads the same global batches, so the
    input runs out at the same step on each.

    JAX's own preemption notifier, which `multihost_utils.reached_preemption_sync_point` (and
    Orbax's `reached_preemption`) reads, is set up by `jax.distributed.initialize` on every
    platform as a C++ `std::signal(SIGTERM, ...)` handler in public jaxlib builds, Cloud
    TPU's included. This Python handler replaces it for good: Python reports SIG_DFL as the
    previous handler and puts that back at `end`. So that sync point never fires in a
    flan_jax run, and nothing here relies on it.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._any_process = None  # set in `begin` when the run has several processes
        self._pending = None  # the combined flags of the previous step, not read yet

    def begin(self, step: Step) -> None:
        if jax.process_count() > 1:
            self._any_process = AnyProcess()
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        print(
            f"process {jax.process_index()}: SIGTERM received: saving a checkpoint and exiting.",
            flush=True,
        )
        self.requested = True

    def after_step(self, step: Step) -> None:
        if self._any_process is None:
            agreed = self.requested
        else:
            agreed, self._pending = self._pending, self._any_process(self.requested)
        if agreed is not None and bool(agreed):
            step.stop = "SIGTERM"

    def end(self, step: Step) -> None:
        self.close()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class AnyProcess:
    """Whether any process passed True, as a replicated scalar on every process: a max over
    one flag per device, jitted over all the run's devices. Returns without waiting for the
    device; the two possible inputs are placed once."""

    def __init__(self):
        devices = jax.devices()
        mesh = jax.sharding.Mesh(np.array(devices), ("flags",))
        self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("flags"))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._max = jax.jit(jnp.max, out_shardings=replicated)
        self._shape = (len(devices),)
        self._flags: dict[bool, jax.Array] = {}

    def __call__(self, flag: bool) -> jax.Array:
        if flag not in self._flags:
            self._flags[flag] = jax.make_array_from_callback(
                self._shape, self._sharding, lambda index: np.full(1, flag, np.int32)
            )
        return self._max(self._flags[flag])


class Checkpoint(Hook):
    """Saves every `every` steps, at the last step and at a step a hook stopped the run on,
    once the step is settled (`Step.settle`: the non-finite check of the state).
    `data_state(step)` is what the input needs to resume after `step` (the run's identity,
    the step and the input's state), saved beside the state; it is called after the loop took
    exactly `step` batches, so an input state read there is the position after them. Owns the
    checkpointer: on closing it waits for the last save (a failed write raises there), then
    closes it."""

    after = (NonFinite, Preemption)  # the check it settles; the stop it saves at

    def __init__(
        self, checkpointer: checkpoints.Checkpointer, every: int, data_state: Callable[[int], dict]
    ):
        self.checkpointer, self.every, self.data_state = checkpointer, every, data_state

    def after_step(self, step: Step) -> None:
        if not (step.every(self.every) or step.stop):
            return
        step.settle()
        self.checkpointer.save(step.number, step.state, self.data_state(step.number), force=True)
        if step.stop:
            print(f"checkpoint at step {step.number} saved after {step.stop}; exiting.", flush=True)

    def close(self) -> None:
        self.checkpointer.wait_until_finished()
        self.checkpointer.close()
