"""SeqIO datasets -> global batches -> `jax.Array`s whose rows live on the devices that own them.

Every host builds the same deterministic stream of global batches and places on its own
devices only the rows they hold. So the batches do not depend on how many hosts there are:
two hosts train exactly what one does, and a run can resume on another topology. At
finetuning batch sizes (the paper's 32-64 sequences) preparing a whole batch per host costs
little next to a training step.
"""

from __future__ import annotations

import difflib
from typing import Iterator, Mapping

import jax
import numpy as np
import seqio
import tensorflow as tf

from flan_jax import partitioning

# The input pipeline runs on the host; keep TensorFlow off the accelerators JAX uses.
tf.config.set_visible_devices([], "GPU")


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
    """The registered task or mixture, or an error naming the closest registered names."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Closest registered names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"No seqio task or mixture named {name!r} is registered.{hint} Import the module "
            "that registers it (in gin: `import tasks.demo`) or fix the name."
        ) from None


def feature_converter(model, *, pack: bool) -> seqio.FeatureConverter:
    return getattr(seqio, model.FEATURE_CONVERTER)(pack=pack)


def train_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    model,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    split: str = "train",
    pack: bool = True,
) -> tf.data.Dataset:
    """Global batches, shuffled and repeated deterministically from `seed`.

    `start_step` skips the batches already trained on, so a resumed run continues with
    exactly the batch an uninterrupted run would see next.
    """
    get_mixture_or_task(mixture_or_task_name)
    ds = seqio.get_dataset(
        mixture_or_task_name,
        task_feature_lengths=dict(task_feature_lengths),
        dataset_split=split,
        shuffle=True,
        num_epochs=None,
        feature_converter=feature_converter(model, pack=pack),
        seed=seed,
        use_cached=False,
    )
    ds = ds.batch(global_batch_size, drop_remainder=True)
    return ds.skip(start_step).prefetch(tf.data.AUTOTUNE)


def place(batch: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Numpy global batch -> arrays sharded over the mesh's batch axis; each host transfers
    only the rows its own devices hold."""
    return {
        name: jax.make_array_from_callback(value.shape, sharding, value.__getitem__)
        for name, value in batch.items()
    }


def global_batches(
    dataset: tf.data.Dataset, partitioner: partitioning.Partitioner
) -> Iterator[dict[str, jax.Array]]:
    sharding = partitioner.batch_sharding()
    for batch in dataset.as_numpy_iterator():
        yield place(batch, sharding)
