"""One of two processes (2 CPU devices each) for test_preemption_two_process: the real training
loop and its NonFinite, Preemption and Checkpoint hooks around a stand-in train step (the
mean of a global batch of 4 rows, one a device), so a run takes seconds. Prints one
`RESULT <json>` line: the step it stopped after, how, and the steps saved.

`sigterm`: process 1 alone sends itself SIGTERM after step 2. `nonfinite`: only process 1's
rows of batch 3 are NaN (NONFINITE='stop').
"""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from sigterm_after_step import SigtermAfter

from flan_jax import checkpoints, hooks, train_loop
from flan_jax.trainer import TrainState

STEPS = 8


def main(model_dir, address, process_id, scenario):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(address, num_processes=2, process_id=process_id)
    mesh = jax.make_mesh((4,), ("data",))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    @jax.jit
    def train_step(state, batch):
        loss = jnp.mean(batch)
        metrics = {"loss": loss, "grad_norm": loss, "finite": jnp.isfinite(loss).astype(float)}
        return state.replace(step=state.step + 1, params=state.params + loss), metrics

    def batch(step):
        """This process's rows of global batch `step`; NaN where the scenario puts them."""
        nan = scenario == "nonfinite" and step == 3 and process_id == 1
        value = np.float32(np.nan if nan else step)
        return jax.make_array_from_callback((4,), rows, lambda i: np.full(1, value))

    state = TrainState(
        step=jax.device_put(jnp.int32(0), replicated),
        params=jax.device_put(jnp.float32(0), replicated),
        opt_state=(),
    )
    checkpointer = checkpoints.Checkpointer(model_dir)
    nonfinite = hooks.NonFinite("stop", checkpointer)
    run_hooks = [
        nonfinite,
        hooks.Preemption(),
        hooks.Checkpoint(checkpointer, 100, lambda step: {"step": step}),
    ]
    if scenario == "sigterm" and process_id == 1:
        run_hooks.insert(0, SigtermAfter(2))
    raised = None
    try:
        state = train_loop.run(
            train_step,
            state,
            (batch(step) for step in range(1, STEPS + 1)),
            start_step=0,
            last_step=STEPS,
            hooks=run_hooks,
        )
        stopped_after = int(state.step)
    except hooks.NonFiniteLossError as e:
        raised, stopped_after = type(e).__name__, int(re.match(r"step (\d+):", str(e)).group(1))
    saved = checkpoints.Checkpointer(model_dir)
    result = {"stopped_after": stopped_after, "raised": raised, "saved": saved.all_steps()}
    saved.close()
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
