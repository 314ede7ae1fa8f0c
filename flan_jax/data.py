"""SeqIO datasets -> global batches -> `jax.Array`s whose rows live on the devices that own them.

Every host builds the same deterministic stream of global batches (seqio streaming here, or
the task cache through `flan_jax.input_pipeline`) and places on its own devices only the rows
they hold. So the batches do not depend on how many hosts there are: two hosts train exactly
what one does, and a run can resume on another topology; the input position a checkpoint
saves is the same on every host. At
finetuning batch sizes (the paper's 32-64 sequences) preparing a whole batch per host costs
little next to a training step.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from flan_jax import packing, partitioning

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


def check_lengths(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    *,
    split: str = "train",
    examples_per_task: int = 100,
) -> str | None:
    """Reads the first examples of each task untrimmed. Raises for a task that yields none;
    returns a warning counting the examples seqio will silently truncate (None if none).

    seqio cuts every feature to its length without a word; this says how much is lost
    before the run spends its budget on clipped targets.
    """
    over: dict[tuple[str, str], list[int]] = {}
    checked = 0
    for task in seqio.get_subtasks(get_mixture_or_task(mixture_or_task_name)):
        ds = task.get_dataset(
            sequence_length=None, split=split, shuffle=False, num_epochs=1, use_cached=False
        )
        seen = 0
        for example in ds.take(examples_per_task).as_numpy_iterator():
            seen += 1
            for feature, limit in task_feature_lengths.items():
                if len(example[feature]) > limit:
                    over.setdefault((task.name, feature), []).append(len(example[feature]))
        if not seen:
            raise ValueError(
                f"task {task.name!r} has no examples in split {split!r}: its data source is "
                f"empty ({_describe_source(task.source, split)}). Check the files or function "
                f"behind it, or remove the task from {mixture_or_task_name!r}."
            )
        checked += seen
    if not over:
        return None
    total = sum(len(lengths) for lengths in over.values())
    details = ", ".join(
        f"{task} {feature} {len(lengths)} (longest {max(lengths)} tokens)"
        for (task, feature), lengths in sorted(over.items())
    )
    return (
        f"warning: {total} features of the {checked} examples checked (the first "
        f"{examples_per_task} of each task's {split!r} split) are longer than "
        f"TASK_FEATURE_LENGTHS {dict(task_feature_lengths)} and will be truncated: {details}. "
        "Raise TASK_FEATURE_LENGTHS to keep them whole."
    )


def check_vocabulary(mixture_or_task_name: str, model_vocab_size: int) -> None:
    """Refuses a task whose vocabulary has more ids than the model's embedding: XLA clamps
    out-of-range ids to the last row, so the run would train on garbage without an error."""
    for task in seqio.get_subtasks(get_mixture_or_task(mixture_or_task_name)):
        for name, feature in task.output_features.items():
            size = feature.vocabulary.vocab_size
            if size > model_vocab_size:
                raise ValueError(
                    f"task {task.name!r} feature {name!r} uses a vocabulary of {size} ids but "
                    f"the model's VOCAB_SIZE is {model_vocab_size}: ids past "
                    f"{model_vocab_size - 1} have no embedding. Use a model (or checkpoint) "
                    "built for this vocabulary, or set VOCAB_SIZE >= the vocabulary size."
                )


def _describe_source(source: seqio.DataSource, split: str) -> str:
    if isinstance(source, seqio.FileDataSource):
        return f"{type(source).__name__} over {source.list_shards(split)}"
    return type(source).__name__


def feature_converter(model, *, pack: bool) -> seqio.FeatureConverter:
    """The model's seqio feature converter, packing first-fit (`flan_jax.packing`)."""
    return getattr(packing, model.FEATURE_CONVERTER)(pack=pack)


def model_batches(
    model,
    examples: Sequence[Mapping[str, Sequence[int]]],
    task_feature_lengths: Mapping[str, int],
    batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Tokenized examples ({feature: ids} for each feature in `task_feature_lengths`) as the
    model's unpacked features, `batch_size` rows a batch (the last padded by `pad_rows`).

    They go through the feature converter the model declares, as a seqio task's examples
    do, so every model family (and mode) gets the features it trains and evaluates on.
    """
    ds = tf.data.Dataset.from_generator(
        lambda: ({k: np.asarray(e[k], np.int32) for k in task_feature_lengths} for e in examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in task_feature_lengths},
    )
    ds = feature_converter(model, pack=False)(ds, dict(task_feature_lengths))
    for batch in ds.batch(batch_size).as_numpy_iterator():
        yield pad_rows(batch, batch_size)


def train_dataset(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    model,
    *,
    global_batch_size: int,
    seed: int,
    split: str = "train",
    pack: bool = True,
    converter: seqio.FeatureConverter | None = None,
) -> tf.data.Dataset:
    """Global batches, shuffled and repeated deterministically from `seed` (the same on every
    host), so a resume that takes the batches already trained on (`restore_position`) sees
    exactly the batch an uninterrupted run would see next. `converter` replaces the model's
    `feature_converter` (the benchmarks compare seqio's own packer through it).
    """
    get_mixture_or_task(mixture_or_task_name)
    ds = seqio.get_dataset(
        mixture_or_task_name,
        task_feature_lengths=dict(task_feature_lengths),
        dataset_split=split,
        shuffle=True,
        num_epochs=None,
        feature_converter=converter or feature_converter(model, pack=pack),
        seed=seed,
        use_cached=False,
    )
    ds = ds.batch(global_batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def place(batch: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Numpy global batch -> arrays sharded over the mesh's batch axis; each host transfers
    only the rows its own devices hold."""
    return {
        name: jax.make_array_from_callback(value.shape, sharding, value.__getitem__)
        for name, value in batch.items()
    }


def pad_rows(batch: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """A last, short batch padded with zero rows to the batch size its function compiled for.
    Zero rows are padding tokens with zero loss weight: they change no sum, and callers drop
    their outputs."""
    return {
        name: np.pad(value, [(0, batch_size - len(value))] + [(0, 0)] * (value.ndim - 1))
        for name, value in batch.items()
    }


class StreamingBatches:
    """`train_dataset`'s global batches as numpy, with the input interface of the cached path
    (`input_pipeline.TrainInput`). A tf.data stream has no position to save: `get_state` is
    None, and a resume replays the batches before it (`restore_position`)."""

    truncation = None  # counted at start by `check_lengths` instead, over a sample

    def __init__(self, dataset: tf.data.Dataset):
        self._batches = dataset.as_numpy_iterator()

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._batches)

    def get_state(self) -> None:
        return None

    def close(self) -> None:
        pass


def restore_position(inputs, start_step: int, state: dict | None, *, sample: int = 10) -> None:
    """Positions `inputs` after `start_step` batches: from a checkpoint's input state in
    constant time, or, without one (streaming, or a checkpoint older than input states), by
    taking `start_step` batches, after a one-line note of what that costs (timed over the
    `sample` batches after the first, which also pays for building the pipeline)."""
    if state is not None:
        began = time.perf_counter()
        inputs.set_state(state)
        print(
            f"input: position after step {start_step} restored from the checkpoint in "
            f"{time.perf_counter() - began:.2f} s (no replay)",
            flush=True,
        )
        return
    if not start_step:
        return
    next(inputs)
    sample = min(sample, start_step - 1)
    began = time.perf_counter()
    for _ in range(sample):
        next(inputs)
    per_batch = (time.perf_counter() - began) / sample if sample else 0.0
    left = start_step - 1 - sample
    print(
        f"input: the checkpoint has no input position; replaying {start_step} batches to "
        f"reach step {start_step}: about {left * per_batch:.0f} s more at "
        f"{per_batch * 1e3:.1f} ms a batch (CACHE_DIR resumes in constant time)",
        flush=True,
    )
    for _ in range(left):
        next(inputs)


def global_batches(
    batches: Iterable[Mapping[str, np.ndarray]], partitioner: partitioning.Partitioner
) -> Iterator[dict[str, jax.Array]]:
    """Places each numpy global batch as it is asked for: one taken from `batches` per batch
    yielded, never one ahead, so the input's state after n batches is the position after n."""
    sharding = partitioner.batch_sharding()
    for batch in batches:
        yield place(batch, sharding)
