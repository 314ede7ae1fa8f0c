"""`python -m flan_jax.train` as one process of a test run that, when SIGTERM_AFTER_STEP is
set, sends itself SIGTERM after that step: a preemption notice at a known step, on the
processes the test picks, instead of one timed from outside."""

import os
import signal
import sys

from flan_jax import train, train_loop


class SigtermAfter(train_loop.Hook):
    """Sends this process SIGTERM after step `step`; Python runs the handler before the next
    hook's `after_step`, so the Preemption hook sees it at that step."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, step: train_loop.Step) -> None:
        if step.number == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def main(argv) -> None:
    if "SIGTERM_AFTER_STEP" in os.environ:
        run, sigterm = train_loop.run, SigtermAfter(int(os.environ["SIGTERM_AFTER_STEP"]))
        train_loop.run = lambda *args, hooks=(), **kwargs: run(
            *args, hooks=[sigterm, *hooks], **kwargs
        )
    train.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
