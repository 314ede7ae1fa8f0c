"""Training batches from the offline task cache (`flan_jax.task_cache`), read with Grain.

Each task's cached examples are a random-access source, shuffled per epoch from the run's
seed and repeated; `Mix` interleaves the tasks at the mixture's rates (the rule of
`grain.MapDataset.mix`, in O(log tasks)), so the k-th example of the stream is computed
from k alone. Grain's packer fills rows of the
feature lengths, rows are batched and converted to the model's features exactly as seqio's
feature converter lays them out. The iterator's state is the stream position plus the
packer's open batch: a few integers whatever the step, restored without replaying the
batches before it. Every host builds the same global batches (`flan_jax.data.place` takes
each host's rows), so the state resumes on any number of hosts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import zlib
from collections.abc import Mapping
from typing import NamedTuple

import grain
import numpy as np
from absl import flags

from flan_jax import task_cache

# Rows Grain's first-fit packer fills at once; an example that fits none of them closes them
# all. On the Flan fixture mixture at 2048/512: 16 bins pack 84.24%, 64 84.53%, 256 84.59%,
# 1024 84.59% (best-fit the same, slower), while the first batch and a restore (which
# re-packs the open packed batch) take longer with the bins: 1 s at 64, 4 s at 256, 22 s
# at 1024 on this 2-core machine under load.
PACKING_BINS = 256
# Examples are read in the thread that packs them: reader threads only contend for the GIL
# (measured: 16 threads, Grain's default, halve the batches/s). Worker processes add speed.
READ_OPTIONS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
STATE_VERSION = 1


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def _task_seed(seed: int, task_name: str) -> int:
    """A shuffle seed per task from the run's seed and the task's name, so adding a task to
    the mixture leaves the others' orders alone."""
    return int(np.random.SeedSequence([seed, zlib.crc32(task_name.encode())]).generate_state(1)[0])


class CachedTask(NamedTuple):
    name: str
    rate: float
    source: grain.MapDataset  # the task's cached records, in the cache's order
    spec: dict  # `task_cache` spec: example count, length statistics


def cached_tasks(
    mixture_or_task_name: str, task_feature_lengths: Mapping[str, int], cache_dir: str
) -> list[CachedTask]:
    """Every task of the mixture with a positive rate and its cached examples, in the
    mixture's order. Raises for a task without a complete cache, or with
    one made differently (`task_cache.check_fingerprint`)."""
    # Imported here: worker processes unpickle this module's functions and need no seqio.
    import seqio

    from flan_jax import data

    mixture_or_task = data.get_mixture_or_task(mixture_or_task_name)
    found = []
    for task in seqio.get_subtasks(mixture_or_task):
        rate = mixture_or_task.get_rate(task) if isinstance(mixture_or_task, seqio.Mixture) else 1.0
        if rate <= 0:
            continue
        spec = task_cache.read_spec(cache_dir, task.name)
        if spec is None:
            raise FileNotFoundError(
                f"task {task.name!r} of {mixture_or_task_name!r} has no complete cache in "
                f"{cache_dir}. Build it with `python -m flan_jax.cache_tasks` and this run's gin "
                "files (same mixture, TASK_FEATURE_LENGTHS and CACHE_DIR), or set CACHE_DIR = "
                "None to stream the mixture through seqio instead."
            )
        task_cache.check_fingerprint(
            spec, task_cache.fingerprint(task, task_feature_lengths), cache_dir
        )
        if not spec["num_examples"]:
            raise ValueError(
                f"task {task.name!r} has no examples in its cache in {cache_dir}: its "
                f"{spec['split']!r} split is empty. Fix its data source or remove it from "
                f"{mixture_or_task_name!r}."
            )
        found.append((task.name, rate, spec))
    # One source over every task's shards, sliced per task: opening a source per task costs a
    # thread pool each (8.9 of 11.2 s for 3,126 tasks), one source a pool in all.
    records = grain.MapDataset.source(
        grain.sources.ArrayRecordDataSource(
            [path for _, _, spec in found for path in task_cache.shard_paths(cache_dir, spec)]
        )
    )
    starts = itertools.accumulate([spec["num_examples"] for _, _, spec in found], initial=0)
    return [
        CachedTask(name, rate, records[start : start + spec["num_examples"]], spec)
        for (name, rate, spec), start in zip(found, starts)
    ]


class _EpochShuffle(grain.MapDataset):
    """A task's examples repeated endlessly, in a new seeded order every epoch.

    Grain's `shuffle` maps each index through `index_shuffle`, which walks cycles over a
    fixed-size domain: measured 0.8 ms an index for a task of 60 examples, 90 us for 1,000.
    One numpy permutation per epoch costs O(examples) once an epoch instead.
    """

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._seed = seed
        self._epoch_order = (-1, None)  # one tuple, replaced whole: reader threads share it

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index, len(self._parent))
        cached_epoch, order = self._epoch_order
        if cached_epoch != epoch:
            order = np.random.default_rng([self._seed, epoch]).permutation(len(self._parent))
            self._epoch_order = (epoch, order)
        return self._parent[int(order[position])]


class Mix(grain.MapDataset):
    """Endless datasets interleaved at integer weights, deterministically: among the first k
    examples, dataset i supplies k * w_i / sum(w) give or take the tree's depth.

    The rule of `grain.MapDataset.mix` (how many of the first k go to the rest of the
    datasets, floor(k * rest / total)), applied down a balanced binary tree of the datasets
    instead of along their list: O(log tasks) an example, not O(tasks) (measured on 1,836
    long-tailed tasks: `mix` 0.7 ms an example, sorted by weight).
    """

    def __init__(self, parents, weights):
        super().__init__(parents)
        self._prefix = [0, *itertools.accumulate(weights)]

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        lo, hi = 0, len(self._parents)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            total, right = self._prefix[hi] - self._prefix[lo], self._prefix[hi] - self._prefix[mid]
            to_right = index * right // total  # how many of the node's first `index` went right
            if (index + 1) * right // total > to_right:
                index, lo = to_right, mid
            else:
                index, hi = index - to_right, mid
        return self._parents[lo][index]


def mixed_examples(tasks, seed: int) -> grain.MapDataset:
    """The endless stream of decoded examples: each task shuffled anew every epoch, the
    tasks interleaved at their rates (to 0.1% of the smallest)."""
    datasets = [_EpochShuffle(task.source, _task_seed(seed, task.name)) for task in tasks]
    smallest = min(task.rate for task in tasks)
    weights = [round(1000 * task.rate / smallest) for task in tasks]
    return Mix(datasets, weights).map(task_cache.decode)


def _encdec_layout(example):
    return {"inputs": example["inputs"], "targets": example["targets"]}


def _prefix_lm_layout(example):
    """seqio's PrefixLMFeatureConverter layout: inputs then targets in one sequence (one
    padding target where targets are empty), with the width of the inputs at every token."""
    targets = example["targets"] if len(example["targets"]) else np.zeros(1, np.int32)
    tokens = np.concatenate([example["inputs"], targets]).astype(np.int32)
    return {
        "targets": tokens,
        "inputs_width": np.full(len(tokens), len(example["inputs"]), np.int32),
    }


def layout(model, task_feature_lengths: Mapping[str, int]):
    """(per-example layout function, the lengths of the sequences it gives) for the model's
    feature converter."""
    if model.FEATURE_CONVERTER == "EncDecFeatureConverter":
        return _encdec_layout, {k: task_feature_lengths[k] for k in ("inputs", "targets")}
    if model.FEATURE_CONVERTER == "PrefixLMFeatureConverter":
        length = task_feature_lengths["inputs"] + task_feature_lengths["targets"]
        return _prefix_lm_layout, {"targets": length, "inputs_width": length}
    raise ValueError(
        f"model.FEATURE_CONVERTER {model.FEATURE_CONVERTER!r}: the cached input pipeline "
        "builds EncDecFeatureConverter and PrefixLMFeatureConverter features only."
    )


class _Pad:
    """One example padded to the lengths, as a packed row holding one segment."""

    def __init__(self, lengths: Mapping[str, int]):
        self.lengths = dict(lengths)

    def __call__(self, example):
        row = {}
        for name, length in self.lengths.items():
            n = len(example[name])
            used = np.arange(length) < n
            row[name] = np.pad(example[name], (0, length - n))
            row[f"{name}_segment_ids"] = used.astype(np.int32)
            row[f"{name}_positions"] = np.where(used, np.arange(length), 0).astype(np.int32)
        return row


def _shift_right(tokens, segment_ids=None):
    """seqio.utils.make_autoregressive_inputs with bos 0 on [batch, length]: each token's
    predecessor, 0 at the first position (of every segment, given segment ids)."""
    shifted = np.zeros_like(tokens)
    shifted[:, 1:] = tokens[:, :-1]
    if segment_ids is not None:
        shifted[:, 1:] *= segment_ids[:, 1:] == segment_ids[:, :-1]
    return shifted


class ModelFeatures:
    """Batched rows -> the model features seqio's converter gives (int32, its names; the
    segment ids and positions only when packed)."""

    def __init__(self, feature_converter: str, pack: bool):
        self.feature_converter, self.pack = feature_converter, pack

    def __call__(self, rows):
        if self.feature_converter == "EncDecFeatureConverter":
            targets = rows["targets"]
            out = {
                "encoder_input_tokens": rows["inputs"],
                "decoder_target_tokens": targets,
                "decoder_input_tokens": self._shift(targets, rows["targets_segment_ids"]),
                "decoder_loss_weights": targets != 0,
            }
            if self.pack:
                out["encoder_segment_ids"] = rows["inputs_segment_ids"]
                out["decoder_segment_ids"] = rows["targets_segment_ids"]
                out["encoder_positions"] = rows["inputs_positions"]
                out["decoder_positions"] = rows["targets_positions"]
        else:
            tokens, width = rows["targets"], rows["inputs_width"]
            positions, segments = rows["targets_positions"], rows["targets_segment_ids"]
            out = {
                "decoder_target_tokens": tokens,
                "decoder_input_tokens": self._shift(tokens, segments),
                # Loss on targets only; attention is bidirectional over the inputs and the
                # position after them (where the first target is predicted).
                "decoder_loss_weights": (positions < width) ^ (tokens != 0),
                "decoder_causal_attention": (positions < width + 1) & (segments > 0),
            }
            if self.pack:
                out["decoder_segment_ids"] = segments
                out["decoder_positions"] = positions
        return {name: np.asarray(value, np.int32) for name, value in out.items()}

    def _shift(self, tokens, segment_ids):
        return _shift_right(tokens, segment_ids if self.pack else None)


class TrainInput:
    """The global batches of a run, as numpy dicts, with a resumable position.

    `get_state()` is JSON-serializable and the same size at every step; `set_state` moves a
    fresh pipeline there without replaying the batches before it. A state only restores into
    a pipeline built with the same settings (mixture, lengths, batch size, seed, packing,
    workers): those decide what the position means.
    """

    def __init__(
        self, dataset: grain.IterDataset, settings: Mapping, truncation: str | None = None
    ):
        self.settings = dict(settings)
        # What the feature lengths cut, counted over every cached example (None: nothing).
        self.truncation = truncation
        self._iterator = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "settings": self.settings,
            "grain": self._iterator.get_state(),
        }

    def set_state(self, state: Mapping) -> None:
        saved = {**state.get("settings", {}), "version": state.get("version")}
        expected = {**self.settings, "version": STATE_VERSION}
        differs = sorted(
            k for k in saved.keys() | expected.keys() if saved.get(k) != expected.get(k)
        )
        if differs:
            details = "; ".join(
                f"{k}: saved {saved.get(k)!r}, this run {expected.get(k)!r}" for k in differs
            )
            raise ValueError(
                f"the input state was saved by a pipeline built differently ({details}): its "
                "position means nothing here. Resume with the run's original settings, or "
                "without the input state (the batches then restart from the seed)."
            )
        self._iterator.set_state(state["grain"])

    def close(self) -> None:
        """Stops Grain's worker processes, if any."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def train_input(
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    model,
    *,
    cache_dir: str,
    global_batch_size: int,
    seed: int,
    pack: bool = True,
    worker_count: int = 0,
    packing_bins: int = PACKING_BINS,
) -> TrainInput:
    """The run's global batches from the cache: the same features, dtypes and shapes as
    `flan_jax.data.train_dataset` for this model. `worker_count` > 0 packs in that many
    Grain worker processes (each packs its own share of the stream; the batches depend on
    the count, so a resumed run keeps it)."""
    lengths = dict(task_feature_lengths)
    tasks = cached_tasks(mixture_or_task_name, lengths, cache_dir)
    to_sequences, row_lengths = layout(model, lengths)
    examples = mixed_examples(tasks, seed).map(to_sequences)
    if pack:
        rows = grain.experimental.FirstFitPackIterDataset(
            examples.to_iter_dataset(READ_OPTIONS),
            length_struct=row_lengths,
            num_packing_bins=packing_bins,
            seed=seed,
        )
    else:
        rows = examples.map(_Pad(row_lengths)).to_iter_dataset(READ_OPTIONS)
    batches = rows.batch(global_batch_size, drop_remainder=True).map(
        ModelFeatures(model.FEATURE_CONVERTER, pack)
    )
    if worker_count > 0:
        # Grain's workers read absl flags; flan_jax's entry points parse theirs with argparse.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    settings = {
        "mixture_or_task_name": mixture_or_task_name,
        "task_feature_lengths": lengths,
        "global_batch_size": global_batch_size,
        "seed": seed,
        "pack": pack,
        "packing_bins": packing_bins if pack else None,
        "worker_count": worker_count,
        "tasks": _digest([(task.name, task.rate) for task in tasks]),
    }
    return TrainInput(batches, settings, truncation_warning(tasks, lengths))


def truncation_warning(tasks: list[CachedTask], lengths: Mapping[str, int]) -> str | None:
    """The examples the cache trimmed to the feature lengths, by task and feature, from its
    statistics (every example, where the streaming path samples the first of each task)."""
    cut = {
        (task.name, feature): stats["truncated"]
        for task in tasks
        for feature, stats in task.spec.get("stats", {}).items()
        if stats.get("truncated")
    }
    if not cut:
        return None
    examples = sum(task.spec["num_examples"] for task in tasks)
    worst = sorted(cut.items(), key=lambda item: -item[1])[:10]
    details = ", ".join(f"{task} {feature} {n}" for (task, feature), n in worst)
    return (
        f"warning: {sum(cut.values())} features of the {examples} cached examples were cut to "
        f"TASK_FEATURE_LENGTHS {dict(lengths)} (most: {details}). Raise TASK_FEATURE_LENGTHS "
        "and rebuild the cache to keep them whole."
    )
