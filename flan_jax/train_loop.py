"""The training loop: `train_step` over batches from a start step to the last, with hooks.

Everything else a run does (progress, evaluation, checkpoints, preemption, the non-finite
policy) is a `Hook` called at its steps, so the loop stays the same as a run grows and can be
tested on an in-memory list of batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

Metrics = Mapping[str, Any]


@dataclasses.dataclass
class Step:
    """What the hooks see: `number` steps are done, `state` is the state after them and
    `metrics` the last step's (None before the first step)."""

    number: int
    state: Any
    metrics: Metrics | None
    last_step: int
    # Set by a hook to end the run after this step, naming why (e.g. "SIGTERM"); the hooks
    # after it still see this step.
    stop: str | None = None
    # Checks of this step that a hook put off so the host need not wait for the device (the
    # non-finite flag); a hook calls `settle` before it keeps the state (a checkpoint).
    deferred: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    def every(self, period: int | None) -> bool:
        """A periodic hook's steps: multiples of `period` and the last step (never if None)."""
        return bool(period) and (self.number % period == 0 or self.number == self.last_step)

    def settle(self) -> None:
        """Runs the deferred checks of this step now (each may raise)."""
        while self.deferred:
            self.deferred.pop(0)()


class Hook:
    """One job of a run. The loop calls `begin` before the first step, `after_step` after
    each step, `end` once the last step is done or a hook stopped the run, and `close` always
    (even when a step or a hook raised), in the reverse order of the hooks.

    `after` names the hook types that must come earlier in a run's hooks when both are there
    (what this one reads of the step: a stop they set, a check they deferred); `run` refuses
    hooks in another order.
    """

    after: tuple[type[Hook], ...] = ()

    def begin(self, step: Step) -> None:
        pass

    def after_step(self, step: Step) -> None:
        pass

    def end(self, step: Step) -> None:
        pass

    def close(self) -> None:
        pass


class DataExhaustedError(RuntimeError):
    """The batches ended before the last step."""

    def __init__(self, step: int, last_step: int):
        self.step, self.last_step = step, last_step
        super().__init__(f"the batches ran out after {step} of {last_step} steps")


def run(
    train_step: Callable[[Any, Any], tuple[Any, Metrics]],
    state: Any,
    batches: Iterable[Any],
    *,
    start_step: int,
    last_step: int,
    hooks: Sequence[Hook] = (),
) -> Any:
    """Trains from `start_step` to `last_step` (or until a hook stops the run); returns the
    final state. Takes exactly one batch per step, so the input's position after step n is
    n batches in -- what a checkpoint saves to resume exactly."""
    check_order(hooks)
    step = Step(start_step, state, None, last_step)
    batches = iter(batches)
    with contextlib.ExitStack() as closing:
        for hook in hooks:
            closing.callback(hook.close)
            hook.begin(step)
        while step.number < last_step and not step.stop:
            batch = next(batches, _END)
            if batch is _END:
                raise DataExhaustedError(step.number, last_step)
            state, metrics = train_step(step.state, batch)
            step = Step(step.number + 1, state, metrics, last_step)
            for hook in hooks:
                hook.after_step(step)
        for hook in hooks:
            hook.end(step)
    return step.state


def check_order(hooks: Sequence[Hook]) -> None:
    """Raises unless each hook comes after the hooks its `after` names."""
    for i, hook in enumerate(hooks):
        for later in hooks[i + 1 :]:
            if isinstance(later, hook.after):
                name, first = type(hook).__name__, type(later).__name__
                raise ValueError(
                    f"hook {name} comes before {first}, but it reads what {first} does to a "
                    f"step: put {name} after {first} in the hooks."
                )


_END = object()
