"""The partitioned train and eval steps: one jitted program for one CPU, a GPU or a pod."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from flan_jax import losses, optim, partitioning

Batch = Mapping[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def normalize_sums(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-token metrics from the model's sums over tokens."""
    tokens = jnp.maximum(sums["num_tokens"], 1.0)
    return {
        "loss": sums["loss"] / tokens,
        "cross_entropy": sums["cross_entropy"] / tokens,
        "z_loss": sums["z_loss"] / tokens,
        "accuracy": sums["num_correct"] / tokens,
        "num_tokens": sums["num_tokens"],
    }


class Trainer:
    """Owns the model, the optimizer and the partitioner; builds the jitted steps once.

    The loss is a weighted sum over target tokens divided by `loss_normalizing_factor`'s
    divisor for the whole global batch (`losses.normalizing_divisor`), so splitting a batch
    into microbatches changes nothing but memory, whatever the factor. (T5X divides each
    microbatch's loss by its own divisor and adds the gradients, so with NUM_REAL_TARGET_TOKENS
    or AVERAGE_PER_SEQUENCE its microbatched gradient is about num_microbatches times the
    full batch's and weighs microbatches alike; here it is always the full batch's.)
    """

    def __init__(
        self,
        model,
        optimizer: optax.GradientTransformation,
        partitioner: partitioning.Partitioner,
        *,
        learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
        num_microbatches: int = 1,
        seed: int = 0,
        nonfinite: str = "stop",
        loss_normalizing_factor: None | float | str = losses.NUM_REAL_TARGET_TOKENS,
    ):
        """`nonfinite`: what a step whose loss, gradients or update is NaN or infinite does.
        'skip' leaves params and optimizer state as they were (the step counter still
        advances, as the batch is consumed); 'stop' applies it, and the run stops on the
        step's `finite` metric (1.0 or 0.0, reported either way; `hooks.NonFinite`).
        `loss_normalizing_factor`: T5X's choices (`losses.check_loss_normalizing_factor`)."""
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches={num_microbatches} must be >= 1.")
        self.loss_normalizing_factor = losses.check_loss_normalizing_factor(loss_normalizing_factor)
        self.model = model
        self.partitioner = partitioner
        self.learning_rate_fn = learning_rate_fn
        self.num_microbatches = num_microbatches
        self.nonfinite = check_nonfinite_policy(nonfinite)
        self._dropout_key = jax.random.key(seed + 1)

        abstract_params, param_specs = partitioning.abstract_params(model, partitioner)
        # Adafactor factors each parameter by its logical axes, as T5X's set_param_axes.
        self.optimizer = optim.for_params(optimizer, param_specs)
        abstract_opt = jax.eval_shape(self.optimizer.init, abstract_params)
        opt_specs = partitioning.optimizer_state_specs(abstract_opt, abstract_params, param_specs)
        self.state_specs = TrainState(step=PartitionSpec(), params=param_specs, opt_state=opt_specs)
        self.state_shardings = partitioner.shardings(self.state_specs)
        abstract_state = TrainState(
            step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt
        )
        partitioning.check_divisible(abstract_state, self.state_shardings)
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_state,
            self.state_shardings,
        )

        batch_sharding = partitioner.batch_sharding()
        replicated = partitioner.replicated_sharding()
        self._init = partitioner.partition(
            self._init_state, in_shardings=None, out_shardings=self.state_shardings
        )
        self.train_step = partitioner.partition(
            self._train_step,
            in_shardings=(self.state_shardings, batch_sharding),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=(0,),
        )
        self.eval_step = partitioner.partition(
            self._eval_step,
            in_shardings=(self.state_shardings.params, batch_sharding),
            out_shardings=replicated,
        )

    @property
    def params_shardings(self):
        return self.state_shardings.params

    def create_state(self, rng: jax.Array) -> TrainState:
        """Fresh parameters and optimizer state, created directly in their shardings."""
        return self._init(rng)

    def state_from_params(self, params) -> TrainState:
        """A step-0 state around given (e.g. pretrained) parameters: fresh optimizer state."""
        init_opt = self.partitioner.partition(
            self.optimizer.init,
            in_shardings=(self.params_shardings,),
            out_shardings=self.state_shardings.opt_state,
        )
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=init_opt(params))

    def continued(self, state: TrainState) -> TrainState:
        """A restored train state (INITIAL_CHECKPOINT_PATH) to continue in a new run: step and
        optimizer state as saved, so Adafactor's decay goes on at the checkpoint's step, but
        the learning-rate schedule's own count (optax's ScaleByScheduleState) at 0, so warmup
        and decay count this run's steps. A resume keeps the saved count."""

        def restart(node):
            if is_schedule_state(node):
                zero = jnp.zeros((), node.count.dtype)
                return node._replace(count=jax.device_put(zero, node.count.sharding))
            return node

        opt_state = jax.tree.map(restart, state.opt_state, is_leaf=is_schedule_state)
        return state.replace(opt_state=opt_state)

    def _init_state(self, rng):
        params = nn.unbox(self.model.init(rng))
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=self.optimizer.init(params)
        )

    def _accumulate_gradients(self, params, batch, dropout_rng):
        """Sums of loss metrics and of gradients over microbatches, in float32."""

        def loss_fn(params, batch, dropout_rng):
            return self.model.loss_fn(params, batch, dropout_rng, self.loss_normalizing_factor)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        n = self.num_microbatches
        batch_size = next(iter(batch.values())).shape[0]
        if batch_size % n:
            raise ValueError(f"batch size {batch_size} is not divisible by num_microbatches={n}.")

        def microbatch_sums(i):
            # Strided microbatches keep every data-parallel shard equally busy.
            mb = jax.tree.map(lambda x: x.reshape(batch_size // n, n, *x.shape[1:])[:, i], batch)
            (_, sums), grads = grad_fn(params, mb, jax.random.fold_in(dropout_rng, i))
            return jax.tree.map(lambda x: x.astype(jnp.float32), (sums, grads))

        def body(acc, i):
            return jax.tree.map(jnp.add, acc, microbatch_sums(i)), None

        total, _ = jax.lax.scan(body, microbatch_sums(0), jnp.arange(1, n))
        return total

    def _train_step(self, state: TrainState, batch: Batch):
        dropout_rng = jax.random.fold_in(self._dropout_key, state.step)
        sums, grads = self._accumulate_gradients(state.params, batch, dropout_rng)
        divisor = losses.normalizing_divisor(
            self.loss_normalizing_factor,
            loss_weight_sum=sums["loss_weight_sum"],
            num_target_positions=batch["decoder_target_tokens"].size,
        )
        grads = jax.tree.map(lambda g, p: (g / divisor).astype(p.dtype), grads, state.params)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = normalize_sums(sums)
        # What the gradients are of (T5X's `loss` metric); "loss" stays per real target token.
        metrics["normalized_loss"] = sums["weighted_loss"] / divisor
        metrics["grad_norm"] = optax.tree.norm(grads)
        finite = (
            jnp.isfinite(metrics["loss"])
            & jnp.isfinite(metrics["grad_norm"])
            & jnp.isfinite(optax.tree.norm(updates))
        )
        metrics["finite"] = finite.astype(jnp.float32)
        if self.nonfinite == "skip":

            def keep_if_finite(new, old):
                return jnp.where(finite, new, old)

            params = jax.tree.map(keep_if_finite, params, state.params)
            opt_state = jax.tree.map(keep_if_finite, opt_state, state.opt_state)
        metrics["nonpadding_fraction"] = sums["num_tokens"] / batch["decoder_target_tokens"].size
        if self.learning_rate_fn is not None:
            metrics["learning_rate"] = self.learning_rate_fn(_schedule_count(state))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def _eval_step(self, params, batch: Batch):
        """Teacher-forced metric sums on one batch (no dropout); add them over batches, then
        `normalize_sums`, so every token of a split weighs the same."""
        _, sums = self.model.loss_fn(params, batch, None)
        return sums


NONFINITE_POLICIES = ("stop", "skip")


def check_nonfinite_policy(policy: str) -> str:
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"NONFINITE={policy!r} must be one of {NONFINITE_POLICIES}.")
    return policy


def is_schedule_state(node) -> bool:
    """Whether `node` of an optimizer state is the learning-rate schedule's own count."""
    return isinstance(node, optax.ScaleByScheduleState)


def _schedule_count(state: TrainState) -> jax.Array:
    """The step the optimizer's learning-rate schedule reads: its own count (see
    `Trainer.continued`), else the train step."""
    schedules = jax.tree.leaves(state.opt_state, is_leaf=is_schedule_state)
    counts = [s.count for s in schedules if is_schedule_state(s)]
    return counts[0] if counts else state.step
