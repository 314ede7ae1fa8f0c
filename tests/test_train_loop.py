"""The training loop and its hooks, in-process on in-memory batches: a stand-in train step over
a small pytree (no model, no seqio), the real Checkpointer where a hook saves."""

import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import checkpoints, hooks, summaries, train_loop
from flan_jax.train_loop import Hook
from flan_jax.trainer import TrainState


class Flag:
    """A `finite` metric that records when the host reads it (reading a real one waits)."""

    def __init__(self, step, value, events):
        self.step, self.value, self.events = step, value, events

    def __float__(self):
        self.events.append(("read", self.step))
        return self.value


class FakeStep:
    """state -> state + batch; steps in `nonfinite` report finite 0. Records each call."""

    def __init__(self, nonfinite=()):
        self.nonfinite, self.events = set(nonfinite), []

    def __call__(self, state, batch):
        step = int(state.step) + 1
        self.events.append(("step", step))
        metrics = {
            "loss": float("nan") if step in self.nonfinite else 1.0 / step,
            "accuracy": 0.5,
            "grad_norm": 1.0,
            "finite": Flag(step, 0.0 if step in self.nonfinite else 1.0, self.events),
        }
        return state.replace(step=state.step + 1, params=state.params + batch), metrics


def initial_state(step=0):
    return TrainState(
        step=jnp.asarray(step, jnp.int32), params=jnp.zeros((4,), jnp.float32), opt_state=()
    )


def batches(n):
    return [jnp.full((4,), float(i + 1)) for i in range(n)]


class Recorder(Hook):
    """Every call the loop makes, as (name, step number)."""

    def __init__(self, calls, name="hook"):
        self.calls, self.name = calls, name

    def begin(self, step):
        self.calls.append((self.name, "begin", step.number))

    def after_step(self, step):
        self.calls.append((self.name, "after_step", step.number))

    def end(self, step):
        self.calls.append((self.name, "end", step.number))

    def close(self):
        self.calls.append((self.name, "close", None))


def test_loop_calls_hooks_in_order_and_takes_one_batch_per_step():
    calls, taken = [], []

    def feed():
        for batch in batches(10):
            taken.append(batch)
            yield batch

    hooks_ = [Recorder(calls, "a"), Recorder(calls, "b")]
    state = train_loop.run(
        FakeStep(), initial_state(2), feed(), start_step=2, last_step=5, hooks=hooks_
    )
    assert int(state.step) == 5
    np.testing.assert_array_equal(state.params, np.full(4, 1.0 + 2.0 + 3.0))
    assert len(taken) == 3  # never a batch past the last step: the input's position is exact
    assert calls == [
        ("a", "begin", 2), ("b", "begin", 2),
        ("a", "after_step", 3), ("b", "after_step", 3),
        ("a", "after_step", 4), ("b", "after_step", 4),
        ("a", "after_step", 5), ("b", "after_step", 5),
        ("a", "end", 5), ("b", "end", 5),
        ("b", "close", None), ("a", "close", None),
    ]  # fmt: skip


def test_a_finished_run_takes_no_step_and_no_batch():
    calls = []
    train_loop.run(
        FakeStep(), initial_state(4), iter(()), start_step=4, last_step=4, hooks=[Recorder(calls)]
    )
    assert [call[1] for call in calls] == ["begin", "end", "close"]


def test_periodic_steps_are_the_multiples_and_the_last():
    fired = [n for n in range(1, 8) if train_loop.Step(n, None, None, 7).every(3)]
    assert fired == [3, 6, 7]
    assert not any(train_loop.Step(n, None, None, 7).every(None) for n in range(1, 8))


def test_data_running_out_raises_with_the_step_and_still_closes_the_hooks():
    calls = []
    with pytest.raises(train_loop.DataExhaustedError, match="ran out after 3 of 10 steps") as e:
        train_loop.run(
            FakeStep(), initial_state(1), batches(2), start_step=1, last_step=10,
            hooks=[Recorder(calls)],
        )  # fmt: skip
    assert e.value.step == 3
    assert calls[-2:] == [("hook", "after_step", 3), ("hook", "close", None)]  # no end


class StopAt(Hook):
    def __init__(self, number):
        self.number = number

    def after_step(self, step):
        if step.number == self.number:
            step.stop = "a test"


def test_a_hook_stops_the_run_after_the_other_hooks_saw_that_step():
    calls = []
    state = train_loop.run(
        FakeStep(), initial_state(), batches(10), start_step=0, last_step=10,
        hooks=[StopAt(3), Recorder(calls)],
    )  # fmt: skip
    assert int(state.step) == 3
    assert calls[-3:] == [("hook", "after_step", 3), ("hook", "end", 3), ("hook", "close", None)]


class FakeWriter:
    def __init__(self):
        self.trained, self.scalars_written, self.closed = [], [], False

    def train(self, step, metrics):
        self.trained.append(step)

    def scalars(self, name, step, values):
        self.scalars_written.append((name, step, dict(values)))

    def close(self):
        self.closed = True


class FakeEvaluator:
    def __init__(self, results):
        self.results, self.calls = results, []

    def evaluate(self, params, step=None):
        self.calls.append(step)
        return self.results

    def truncated(self):
        return {}


def test_progress_and_evaluation_hooks_fire_at_their_steps(capsys):
    writer = FakeWriter()
    teacher_forced = FakeEvaluator({"demo_sort": {"eval/loss": 0.5, "eval/accuracy": 0.75}})
    suites = FakeEvaluator({"bbh_direct": {"bbh_navigate": {"accuracy": 40.0}}})
    prediction = hooks.PredictionEval(FakeEvaluator({"demo_sort": {"accuracy": 10.0}}), writer)
    train_loop.run(
        FakeStep(), initial_state(), batches(5), start_step=0, last_step=5,
        hooks=[
            hooks.Progress(writer, 2),
            hooks.TeacherForcedEval(teacher_forced, writer, 2),
            hooks.SuiteEval(suites, writer, 3),
            prediction,
        ],
    )  # fmt: skip
    assert writer.trained == [2, 4, 5] and writer.closed
    assert len(teacher_forced.calls) == 3 and suites.calls == [3, 5]
    assert prediction.evaluator.calls == [0, 5]
    assert list(prediction.results) == ["step 0", "step 5"]
    tags = [(name, step) for name, step, _ in writer.scalars_written]
    assert tags == [
        ("eval/demo_sort", 0), ("eval/demo_sort", 2), ("benchmarks/bbh_direct", 3),
        ("eval/demo_sort", 4), ("eval/demo_sort", 5), ("benchmarks/bbh_direct", 5),
        ("eval/demo_sort", 5),
    ]  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("  eval demo_sort: loss 0.5000  accuracy 0.7500") == 3
    assert out.count("  benchmarks/bbh_direct: ") == 2
    assert "| task | metric | step 0 | step 5 |" in out


def test_prediction_eval_skips_the_final_decode_when_no_step_ran():
    evaluator = FakeEvaluator({"demo_sort": {"accuracy": 10.0}})
    hook = hooks.PredictionEval(evaluator, FakeWriter())
    train_loop.run(FakeStep(), initial_state(3), (), start_step=3, last_step=3, hooks=[hook])
    assert evaluator.calls == [3] and list(hook.results) == ["step 3"]


def test_progress_prints_the_console_line(tmp_path, capsys):
    writer = summaries.ProgressWriter(
        str(tmp_path), total_steps=3, start_step=0, tokens_per_step=100, flops_per_step=1e9,
        peak_flops=None,
    )  # fmt: skip
    train_loop.run(
        FakeStep(), initial_state(), batches(3), start_step=0, last_step=3,
        hooks=[hooks.Progress(writer, 2)],
    )  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/3", "3/3"]
    assert "loss 0.5000" in lines[0] and "tokens/s" in lines[0] and "ETA" in lines[0]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "train"))


@pytest.fixture
def checkpointer(tmp_path):
    checkpointer = checkpoints.Checkpointer(str(tmp_path))
    yield checkpointer
    checkpointer.close()


def saving_hooks(checkpointer, policy, every):
    nonfinite = hooks.NonFinite(policy, checkpointer)
    checkpoint = hooks.Checkpoint(checkpointer, every, lambda step: {"seed": 0, "step": step})
    return nonfinite, [nonfinite, hooks.Preemption(), checkpoint]


def test_checkpoints_at_checkpoint_every_and_the_last_step(tmp_path, checkpointer):
    _, run_hooks = saving_hooks(checkpointer, "stop", every=2)
    state = train_loop.run(
        FakeStep(), initial_state(), batches(5), start_step=0, last_step=5, hooks=run_hooks
    )
    assert sorted(int(n) for n in os.listdir(tmp_path / "checkpoints")) == [2, 4, 5]
    restored, data_state = checkpoints.Checkpointer(str(tmp_path)).restore(state, 4)
    assert data_state == {"seed": 0, "step": 4} and int(restored.step) == 4
    np.testing.assert_array_equal(restored.params, np.full(4, 1.0 + 2 + 3 + 4))


def test_sigterm_saves_the_current_step_and_stops(tmp_path, checkpointer, capsys):
    before = signal.getsignal(signal.SIGTERM)
    step_fn = FakeStep()

    def preempted_at_3(state, batch):
        if int(state.step) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled between bytecodes, before step 3 ends
        return step_fn(state, batch)

    _, run_hooks = saving_hooks(checkpointer, "stop", every=100)
    state = train_loop.run(
        preempted_at_3, initial_state(), batches(100), start_step=0, last_step=100,
        hooks=run_hooks,
    )  # fmt: skip
    assert int(state.step) == 3
    assert os.listdir(tmp_path / "checkpoints") == ["3"]
    out = capsys.readouterr().out
    assert "SIGTERM received: saving a checkpoint and exiting." in out
    assert "checkpoint at step 3 saved after SIGTERM; exiting." in out
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


def test_nonfinite_stop_reads_each_flag_a_step_late_and_raises_keeping_the_last_checkpoint(
    tmp_path, checkpointer
):
    step_fn = FakeStep(nonfinite={3})
    _, run_hooks = saving_hooks(checkpointer, "stop", every=2)
    with pytest.raises(
        hooks.NonFiniteLossError,
        match=r"step 3: the loss, gradients or update is NaN or infinite \(loss nan, grad_norm "
        r"1.0\)\. Stopped without saving this state; the last checkpoint, step 2 in .*, is intact",
    ):
        train_loop.run(
            step_fn, initial_state(), batches(10), start_step=0, last_step=10, hooks=run_hooks
        )
    # Step 3's flag is read once step 4 is queued, except at a save (step 2): read at once.
    assert step_fn.events == [
        ("step", 1), ("step", 2), ("read", 1), ("read", 2), ("step", 3), ("step", 4), ("read", 3),
    ]  # fmt: skip
    assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_nonfinite_stop_checks_a_state_before_saving_it(tmp_path, checkpointer):
    step_fn = FakeStep(nonfinite={4})
    _, run_hooks = saving_hooks(checkpointer, "stop", every=2)
    with pytest.raises(hooks.NonFiniteLossError, match=r"step 4: .*step 2 in .*, is intact"):
        train_loop.run(
            step_fn, initial_state(), batches(10), start_step=0, last_step=10, hooks=run_hooks
        )
    assert step_fn.events[-1] == ("read", 4)  # before step 5 started: nothing of 4 was saved
    assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_nonfinite_skip_records_the_steps_and_trains_on(tmp_path, checkpointer, capsys):
    nonfinite, run_hooks = saving_hooks(checkpointer, "skip", every=2)
    assert nonfinite.skip  # reports under the policy the trainer applies
    state = train_loop.run(
        FakeStep(nonfinite={3, 5}), initial_state(), batches(5), start_step=0, last_step=5,
        hooks=run_hooks,
    )  # fmt: skip
    assert int(state.step) == 5 and nonfinite.skipped == [3, 5]
    out = capsys.readouterr().out
    skipped = "step 3: non-finite loss, gradients or update (loss nan, grad_norm 1.0); batch "
    assert skipped + "skipped, parameters unchanged (1 skipped so far)" in out
    assert "NONFINITE='skip' dropped the updates of 2 steps: [3, 5]" in out
    assert sorted(int(n) for n in os.listdir(tmp_path / "checkpoints")) == [2, 4, 5]


def test_hooks_out_of_their_order_are_refused(checkpointer):
    checkpoint = hooks.Checkpoint(checkpointer, 2, lambda step: {"step": step})
    with pytest.raises(
        ValueError,
        match=r"hook Checkpoint comes before Preemption, but it reads what Preemption does to a "
        r"step: put Checkpoint after Preemption in the hooks\.",
    ):
        train_loop.run(
            FakeStep(), initial_state(), batches(2), start_step=0, last_step=2,
            hooks=[checkpoint, hooks.Preemption()],
        )  # fmt: skip


def test_unknown_nonfinite_policy_is_refused(checkpointer):
    with pytest.raises(ValueError, match=r"NONFINITE='ignore' must be one of \('stop', 'skip'\)"):
        hooks.NonFinite("ignore", checkpointer)
