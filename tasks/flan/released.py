"""The released Flan 2022 collection (FLAN's flan/v2 README) as seqio tasks and mixtures.

FLAN's authors published the rendered collection as five Hugging Face datasets,
`DataProvenanceInitiative/<submix>_submix_original`, each parquet shards
`data/train-*.parquet` (split by size, not by task) with the string columns `inputs`,
`targets`, `task_source`, `task_name`, `template_type`. Put them side by side:

  $FLAN_JAX_RELEASED_DIR/flan2021_submix_original/data/train-00000-of-00002-....parquet
  $FLAN_JAX_RELEASED_DIR/t0_submix_original/data/...          (and niv2, cot, dialog)

(gin: `RELEASED_DIR`). Each (submix, task_name, template_type) is one seqio task,
`released_<submix>_<task_name>_<template_type>` with the task name's `/`, `:`, `-` etc. as `_`.

Why the mixtures are lazy: which tasks exist and how big they are is only known by reading
the shards (17M rows, perhaps on gs://), and importing must stay instant. So the mixtures
registered here are `LazyMixture`s: the first use (`.tasks`, `get_rate`, `get_dataset`, as
`seqio.get_subtasks` and `python -m flan_jax.inspect_mixture` do) reads the index of each
submix it needs (only the `task_name`/`template_type` columns, row group by row group, kept
in this process), registers the submix's tasks and fixes the rates. Before that the
directory need not exist; a missing submix fails then, naming the command that fetches it.

Mixtures (rates are seqio rates, summing to 1):
  flan2022_released    FLAN's `flan2022_submix` (flan/v2/run_example.py): submix weights
                       Flan 2021 0.4, T0 0.32, NIV2 0.2, CoT 0.05, Dialog 0.03; within a
                       submix the template types FLAN mixes (all four for Flan 2021 and T0,
                       zs_opt and fs_opt for the others) get equal shares; within a template
                       type, as FLAN's `mixtures_utils.register_mixture`
                       (`seqio.mixing_rate_num_examples(maximum=cap)`), each task's rows
                       capped at its submix's cap (30k / 20k / 5k / 100k / 200k).
  flan2022_released_a  the paper's proportions A and B (`mixtures.PROPORTIONS`) over Muffin
  flan2022_released_b  (Flan 2021 + Dialog) / T0-SF / NIV2 / CoT: each task's weight in its
                       family min(cap, rows), the family's weights summing to its proportion.
`released_mixture(...)` (gin: `MIXTURE_OR_TASK_NAME = @released.released_mixture()`) adds a
CoT ratio, other shares and user tasks, as `mixtures.flan_mixture` does.

Each task's source (`ReleasedSource`) streams only the row groups holding its rows, and
offers the shared-file interface (`shared_files`, `partition`, `read_partitioned`,
`rows_to_dataset`) with which the offline cache reads each shard once for all its tasks.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import seqio
import tensorflow as tf
from etils import epath

from tasks.flan import mixtures, registry

DIR_ENV = "FLAN_JAX_RELEASED_DIR"
SUBMIXES = ("flan2021", "t0", "niv2", "cot", "dialog")
COLUMNS = ("inputs", "targets", "task_source", "task_name", "template_type")
TEMPLATE_TYPES = ("zs_opt", "fs_opt", "zs_noopt", "fs_noopt")
SHARD_PATTERN = "data/train-*.parquet"
HF_REPO = "DataProvenanceInitiative/{folder}"
# Rows of each submix as released (FLAN's flan/v2 README); dialog's count is not published.
ROWS = {"flan2021": 5_360_000, "t0": 1_650_000, "niv2": 10_070_000, "cot": 180_000}
# Parquet bytes a row, about: a 350k-row sample of the collection is 323 MB of parquet.
BYTES_PER_ROW = 920

# FLAN's flan2022_submix: submix weights, and the template types each submix mixes equally.
FLAN_WEIGHTS = {"flan2021": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05, "dialog": 0.03}
FLAN_TEMPLATE_TYPES = {
    "flan2021": TEMPLATE_TYPES,
    "t0": TEMPLATE_TYPES,
    "niv2": ("zs_opt", "fs_opt"),
    "cot": ("zs_opt", "fs_opt"),
    "dialog": ("zs_opt", "fs_opt"),
}
# Rows a task counts with at most (FLAN's DEFAULT_MIXTURE_MAX_EXAMPLES).
TASK_PREFIX = "released_"  # then the submix, the task name, the template type


def cap_of(task_name: str) -> int | None:
    """The cap of a released task's submix (None for another task)."""
    if not task_name.startswith(TASK_PREFIX):
        return None
    return CAPS.get(task_name[len(TASK_PREFIX) :].split("_")[0])


CAPS = {
    "flan2021": mixtures.CAPS["muffin"],
    "t0": mixtures.CAPS["t0sf"],
    "niv2": mixtures.CAPS["niv2"],
    "cot": mixtures.CAPS["cot"],
    "dialog": 200_000,
}
# The paper's families (proportions A and B) as released submixes.
FAMILY_SUBMIXES = {
    "muffin": ("flan2021", "dialog"),
    "t0sf": ("t0",),
    "niv2": ("niv2",),
    "cot": ("cot",),
}
# Rows a pyarrow batch holds while streaming a row group.
_BATCH_ROWS = 1024


def folder(submix: str) -> str:
    return f"{submix}_submix_original"


def fetch_command(directory: str, submix: str) -> str:
    return (
        f"huggingface-cli download --repo-type dataset {HF_REPO.format(folder=folder(submix))} "
        f"--local-dir {epath.Path(directory) / folder(submix)}"
    )


def download_help(directory: str | None, submixes: Sequence[str] = SUBMIXES) -> str:
    """What fetching `submixes` takes: the commands, the rows and the disk to expect."""
    target = directory or f"${DIR_ENV}"
    counted = [s for s in submixes if s in ROWS]
    rows = sum(ROWS[s] for s in counted)
    sizes = ", ".join(f"{s} {ROWS[s] / 1e6:.2f}M" for s in counted)
    unknown = [s for s in submixes if s not in ROWS]
    return (
        f"Fetch it (FLAN's flan/v2 README links it; {rows / 1e6:.2f}M rows: {sizes}"
        + (f", plus {', '.join(unknown)}" if unknown else "")
        + f"; about {rows * BYTES_PER_ROW / 1e9:.0f} GB of parquet"
        + (f" without {', '.join(unknown)}" if unknown else "")
        + ") with: "
        + "; ".join(fetch_command(target, s) for s in submixes)
    )


def resolve_directory(directory: str | None) -> str:
    """`directory`, else $FLAN_JAX_RELEASED_DIR; an error saying what to set and how to
    fetch the collection if neither names an existing directory."""
    directory = directory or os.environ.get(DIR_ENV)
    if not directory:
        raise FileNotFoundError(
            f"No directory for the released Flan collection: set ${DIR_ENV} (or gin "
            f"RELEASED_DIR) to the folder holding {', '.join(folder(s) for s in SUBMIXES)}. "
            + download_help(None)
            + ". Offline, without it: mixtures/flan2022_handbuilt.gin (an approximation)."
        )
    if not epath.Path(directory).is_dir():
        raise FileNotFoundError(
            f"The released Flan collection's directory {directory} does not exist; it should "
            f"hold <submix>_submix_original/{SHARD_PATTERN} for the submixes {SUBMIXES}. "
            + download_help(directory)
        )
    return directory


def check_present(directory: str | None, submixes: Sequence[str]) -> str:
    """The collection's directory, checked (without reading a shard) to hold a folder of
    shards for each of `submixes`; one error names every missing one and how to fetch it."""
    directory = resolve_directory(directory)
    missing = [
        s for s in submixes if not any((epath.Path(directory) / folder(s)).glob(SHARD_PATTERN))
    ]
    if missing:
        raise FileNotFoundError(
            f"The mixture needs {', '.join(folder(s) for s in missing)}, missing from "
            f"{directory} (or without {SHARD_PATTERN}). " + download_help(directory, missing)
        )
    return directory


# ---- the index -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class SubmixIndex:
    """Which tasks one submix holds: per (task_name, template_type) its row count, its seqio
    task name, and the row groups holding it: an int array of rows (file number, row group,
    rows), compact because a task may lie in every row group of a shuffled submix."""

    submix: str
    files: tuple[str, ...]
    counts: Mapping[tuple[str, str], int]
    units: Mapping[tuple[str, str], np.ndarray]
    names: Mapping[tuple[str, str], str]


@contextlib.contextmanager
def _parquet(path: str) -> Iterator[pq.ParquetFile]:
    """One shard, its columns checked; errors name the file and the expected columns."""
    with epath.Path(path).open("rb") as f:
        try:
            shard = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(
                f"{path} is not a readable parquet file ({e}); a released shard has the string "
                f"columns {COLUMNS}."
            ) from e
        schema = shard.schema_arrow
        missing = [c for c in COLUMNS if c not in schema.names]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {missing} (it has {schema.names}); a released shard "
                f"has the string columns {COLUMNS}."
            )
        for column in COLUMNS:
            kind = schema.field(column).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise ValueError(f"{path}: column {column!r} is {kind}, expected string.")
        if shard.metadata.num_rows == 0:
            raise ValueError(f"{path} is an empty shard (0 rows); download it again.")
        yield shard


def _check_key(path: str, task_name, template_type) -> None:
    if template_type not in TEMPLATE_TYPES:
        raise ValueError(
            f"{path}: unknown template_type {template_type!r} (task_name {task_name!r}); "
            f"expected one of {TEMPLATE_TYPES}."
        )
    if not task_name:
        raise ValueError(f"{path}: a row has task_name {task_name!r} (template {template_type}).")


def _sanitized(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_") or "_"


def task_names(submix: str, keys) -> dict[tuple[str, str], str]:
    """(task_name, template_type) -> a valid, readable seqio task name, unique in the submix:
    where two task names read the same once sanitized, the changed ones get a digest."""
    plain = {name: _sanitized(name) for name, _ in keys}
    clashes = collections.Counter(plain.values())

    def readable(name):
        if clashes[plain[name]] > 1 and plain[name] != name:
            return f"{plain[name]}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"
        return plain[name]

    return {(n, t): f"{TASK_PREFIX}{submix}_{readable(n)}_{t}" for n, t in keys}


@functools.cache
def submix_index(directory: str, submix: str) -> SubmixIndex:
    """Reads (once a process) the task_name and template_type columns of a submix's shards."""
    base = epath.Path(directory) / folder(submix)
    files = tuple(sorted(str(p) for p in base.glob(SHARD_PATTERN)))
    if not files:
        raise FileNotFoundError(
            f"{base} has no shards {SHARD_PATTERN}; fetch them with "
            f"`{fetch_command(directory, submix)}`."
        )
    ids: dict[tuple[str, str], int] = {}  # key -> its number, in order of appearance
    found = []  # per row group: (key numbers, file number, row group, rows) arrays
    keys = ["task_name", "template_type"]
    for number, path in enumerate(files):
        with _parquet(path) as shard:
            for group in range(shard.num_row_groups):
                table = shard.read_row_group(group, columns=keys)
                grouped = table.group_by(keys).aggregate([([], "count_all")])
                names, types = (grouped.column(c).to_pylist() for c in keys)
                for key in zip(names, types):
                    _check_key(path, *key)
                key_ids = [ids.setdefault(key, len(ids)) for key in zip(names, types)]
                rows = grouped.column("count_all").to_numpy()
                found.append(
                    np.stack(
                        [key_ids, np.full_like(rows, number), np.full_like(rows, group), rows], 1
                    )
                )
    found = np.concatenate(found)
    found = found[np.argsort(found[:, 0], kind="stable")]  # each key's units, in file order
    splits = np.split(found[:, 1:], np.flatnonzero(np.diff(found[:, 0])) + 1)
    units = dict(zip(ids, splits))
    counts = {key: int(value[:, 2].sum()) for key, value in units.items()}
    logging.info("Released %s: %d tasks, %d rows", submix, len(counts), sum(counts.values()))
    return SubmixIndex(submix, files, counts, units, task_names(submix, counts))


# ---- the per-task source -------------------------------------------------------------------


def _row_signature() -> dict[str, tf.TensorSpec]:
    return {column: tf.TensorSpec([], tf.string) for column in COLUMNS}


class ReleasedSource(seqio.DataSource):
    """The rows of one (task_name, template_type) of a submix, read from its shared shards."""

    def __init__(self, index: SubmixIndex, key: tuple[str, str]):
        super().__init__(splits=("train",))
        self.index = index
        self.key = key

    @property
    def partition(self) -> str:
        return self.index.names[self.key]

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def _check_split(self, split: str) -> None:
        if split != "train":
            raise ValueError(f"{self.partition}: the released collection has only 'train'.")

    def num_input_examples(self, split: str) -> int:
        self._check_split(split)
        return self.index.counts[self.key]

    def list_shards(self, split: str) -> Sequence[str]:
        self._check_split(split)
        return [self.index.files[n] for n in np.unique(self.index.units[self.key][:, 0])]

    def shared_files(self, split: str) -> tuple[str, ...]:
        """Every shard of this task's submix (each holds rows of many tasks)."""
        self._check_split(split)
        return self.index.files

    def read_partitioned(
        self, path: str, keys: Collection[str] | None = None
    ) -> Iterator[tuple[str, dict]]:
        """(seqio task name, row) of every row of one shard, streamed in order; with `keys`
        (seqio task names of this submix) only their rows, from only the row groups the index
        says hold them, the others masked in pyarrow so that their strings never become
        Python objects (a pass keeping few rows costs little more than reading the shard)."""
        if keys is None:
            wanted, groups = None, None
        else:
            by_name = {name: key for key, name in self.index.names.items()}
            unknown = sorted(set(keys) - set(by_name))
            if unknown:
                raise ValueError(f"{unknown} are not tasks of the released {self.index.submix}.")
            wanted = pa.array(["\0".join(by_name[name]) for name in keys])
            number = self.index.files.index(path)
            units = np.concatenate([self.index.units[by_name[name]] for name in keys])
            groups = sorted(set(units[units[:, 0] == number, 1].tolist()))
            if not groups:
                return
        with _parquet(path) as shard:
            batches = shard.iter_batches(
                batch_size=_BATCH_ROWS, row_groups=groups, columns=list(COLUMNS)
            )
            for batch in batches:
                if wanted is not None:
                    joined = pc.binary_join_element_wise(
                        batch["task_name"], batch["template_type"], "\0"
                    )
                    batch = batch.filter(pc.is_in(joined, value_set=wanted))
                for row in batch.to_pylist():
                    key = (row["task_name"], row["template_type"])
                    if key not in self.index.names:
                        _check_key(path, *key)
                        raise ValueError(
                            f"{path}: task {key} is not in the index of {self.index.submix} "
                            "(was the shard replaced after the index was read?)."
                        )
                    yield self.index.names[key], row

    def rows_to_dataset(self, rows: Sequence[Mapping[str, str]]) -> tf.data.Dataset:
        """Rows (as `read_partitioned` gives them) as the dataset `get_dataset` would yield."""
        return tf.data.Dataset.from_tensor_slices(
            {
                c: tf.constant([row[c] for row in rows], tf.string, shape=[len(rows)])
                for c in COLUMNS
            }
        )

    def _rows(self, order: Sequence[int], shard_info: seqio.ShardInfo | None) -> Iterator[dict]:
        """This task's rows, row group by row group in `order` (each file opened once a run of
        its row groups); a shard keeps the rows whose position in the task (in file order,
        whatever the order read) is its index mod count."""
        units = self.index.units[self.key]
        starts = np.cumsum(units[:, 2]) - units[:, 2]
        name, template_type = self.key
        for number, run in itertools.groupby(order, key=lambda unit: units[unit, 0]):
            with _parquet(self.index.files[number]) as shard:
                for unit in run:
                    position = int(starts[unit])
                    batches = shard.iter_batches(
                        batch_size=_BATCH_ROWS,
                        row_groups=[int(units[unit, 1])],
                        columns=list(COLUMNS),
                    )
                    for batch in batches:
                        mine = pc.and_(
                            pc.equal(batch["task_name"], name),
                            pc.equal(batch["template_type"], template_type),
                        )
                        for row in batch.filter(mine).to_pylist():
                            if (
                                shard_info is None
                                or position % shard_info.num_shards == shard_info.index
                            ):
                                yield row
                            position += 1

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length=None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        """Streams the row groups holding this task: in file order, or if `shuffle` the files
        in a seeded random order and each file's row groups too."""
        self._check_split(split)
        units = self.index.units[self.key]
        order = np.arange(len(units))
        if shuffle:
            rng = np.random.default_rng(seed)
            files = np.unique(units[:, 0]).tolist()
            file_rank = dict(zip(files, rng.permutation(len(files)).tolist()))
            order = sorted(rng.permutation(order).tolist(), key=lambda u: file_rank[units[u, 0]])
        return tf.data.Dataset.from_generator(
            lambda: self._rows(list(order), shard_info), output_signature=_row_signature()
        )


def register_tasks(index: SubmixIndex) -> list[str]:
    """Registers a submix's tasks (again only if another index registered them)."""
    names = []
    for key, name in index.names.items():
        if name in seqio.TaskRegistry.names():
            source = seqio.TaskRegistry.get(name).source
            if isinstance(source, ReleasedSource) and source.index is index:
                names.append(name)
                continue
            seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=ReleasedSource(index, key),
            preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
            output_features=registry.output_features(),
        )
        names.append(name)
    return names


# ---- mixtures ------------------------------------------------------------------------------


class LazyMixture(seqio.Mixture):
    """A seqio Mixture whose tasks and rates come from `build()` (task name -> rate), called
    when the mixture is first used rather than when it is registered."""

    _BUILT = ("_tasks", "_sub_mixtures", "_task_to_rate", "_task_map", "_sample_fn")

    def __init__(
        self,
        name: str,
        build: Callable[[], Mapping[str, float]],
        check: Callable[[], object] = lambda: None,
    ):
        self._name = name
        self._build = build
        self._check = check
        self._source_info = None

    def check_inputs(self) -> None:
        """Raises, saying how to fix it, if the data `build()` reads is absent; reads no
        data, so it answers at once (`flan_jax.preflight` asks it first)."""
        self._check()

    def __getattr__(self, attribute: str):
        if attribute not in self._BUILT:
            raise AttributeError(attribute)
        rates = self._build()
        seqio.Mixture.__init__(self, self._name, list(rates.items()))
        return object.__getattribute__(self, attribute)


def _indexes(directory: str | None, submixes) -> dict[str, SubmixIndex]:
    """The index of each submix, its tasks registered; one error lists every missing one."""
    directory = check_present(directory, submixes)
    indexes = {s: submix_index(directory, s) for s in submixes}
    for index in indexes.values():
        register_tasks(index)
    return indexes


def register_collection(directory: str | None = None) -> list[str]:
    """Registers the tasks of every submix present in `directory` (None:
    $FLAN_JAX_RELEASED_DIR) and returns their names: for a process that looks tasks up by
    name without first resolving a mixture that holds them."""
    directory = resolve_directory(directory)
    present = [s for s in SUBMIXES if (epath.Path(directory) / folder(s)).is_dir()]
    return [
        name for index in _indexes(directory, present).values() for name in index.names.values()
    ]


def flan_rates(indexes: Mapping[str, SubmixIndex], weights: Mapping[str, float]) -> dict:
    """FLAN's scheme: a submix's weight split equally over its template types, then by rows
    capped at the submix's cap."""
    rates = {}
    for submix, weight in weights.items():
        index = indexes[submix]
        present = {t for _, t in index.counts}
        types = [t for t in FLAN_TEMPLATE_TYPES[submix] if t in present] or sorted(present)
        for template_type in types:
            counts = {
                index.names[k]: (n, 1) for k, n in index.counts.items() if k[1] == template_type
            }
            rates.update(mixtures.family_rates(counts, CAPS[submix], weight / len(types)))
    return rates


def paper_rates(indexes: Mapping[str, SubmixIndex], shares: Mapping[str, float]) -> dict:
    """The paper's scheme: a family's share split by each task's rows capped at its submix's cap."""
    rates = {}
    for family, share in shares.items():
        counts, caps = {}, {}
        for submix in FAMILY_SUBMIXES[family]:
            index = indexes[submix]
            for key, n in index.counts.items():
                counts[index.names[key]] = (n, 1)
                caps[index.names[key]] = CAPS[submix]
        rates.update(mixtures.family_rates(counts, caps, share))
    return rates


def plan(
    directory: str | None,
    shares: Mapping[str, float],
    user_tasks: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """seqio task name -> rate (summing to 1). `shares`: submix -> weight (FLAN's scheme) or
    family -> proportion (the paper's); user tasks take their shares of the whole first."""
    user_tasks = dict(user_tasks or {})
    scale = (1.0 - mixtures.total_user_share(user_tasks)) / (sum(shares.values()) or 1.0)
    scaled = {key: share * scale for key, share in shares.items() if share > 0}
    indexes = _indexes(directory, submixes_of(scaled))
    if set(scaled) <= set(SUBMIXES):
        rates = flan_rates(indexes, scaled)
    else:
        rates = paper_rates(indexes, scaled)
    return {**rates, **user_tasks}


def submixes_of(shares: Mapping[str, float]) -> list[str]:
    """The submixes that shares of submixes (FLAN's scheme) or of families read."""
    keys = [key for key, share in shares.items() if share > 0]
    if set(keys) <= set(SUBMIXES):
        return keys
    return [s for family in keys for s in FAMILY_SUBMIXES[family]]


def register_mixture(
    name: str,
    shares: Mapping[str, float],
    directory: str | None = None,
    user_tasks: Mapping[str, float] | None = None,
) -> str:
    """Registers (or replaces) a lazy mixture of the collection in `directory` (None:
    $FLAN_JAX_RELEASED_DIR when first used)."""
    shares, user_tasks = dict(shares), dict(user_tasks or {})
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add_provider(
        name,
        LazyMixture(
            name,
            lambda: plan(directory, shares, user_tasks),
            lambda: check_present(directory, submixes_of(shares)),
        ),
    )
    return name


def _shares(proportions: str | Mapping[str, float]) -> tuple[str, dict[str, float]]:
    """(mixture name, shares) of 'released', 'a', 'b', or a dict of submix or family shares."""
    if isinstance(proportions, str):
        key = proportions.lower()
        if key == "released":
            return "flan2022_released", dict(FLAN_WEIGHTS)
        if key in mixtures.PROPORTIONS:
            return f"flan2022_released_{key}", dict(mixtures.PROPORTIONS[key])
        raise ValueError(
            f"proportions={proportions!r}: use 'released', one of {sorted(mixtures.PROPORTIONS)}, "
            "or a dict."
        )
    shares = dict(proportions)
    if not shares or not (set(shares) <= set(SUBMIXES) or set(shares) <= set(FAMILY_SUBMIXES)):
        raise ValueError(
            f"proportions={shares}: keys must all be submixes {SUBMIXES} (FLAN's scheme) or "
            f"all families {tuple(FAMILY_SUBMIXES)} (the paper's)."
        )
    name = "flan2022_released_" + "_".join(f"{k}{v:g}" for k, v in sorted(shares.items()))
    return name, shares


def released_mixture(
    proportions: str | Mapping[str, float] = "released",
    cot_ratio: float | None = None,
    directory: str | None = None,
    user_tasks: Mapping[str, float] | None = None,
) -> str:
    """Registers a mixture of the released collection and returns its name, for gin:
    `MIXTURE_OR_TASK_NAME = @released.released_mixture()`.

    proportions: 'released' (FLAN's own weights), 'a' / 'b' (the paper's proportions), or a
      dict: submix -> weight (FLAN's scheme, e.g. {'niv2': 1, 'cot': 1}) or family -> share
      ('muffin', 't0sf', 'niv2', 'cot': the paper's scheme).
    cot_ratio: CoT's share of the whole, the others rescaled (None: the proportions' own).
    directory: the collection (None: $FLAN_JAX_RELEASED_DIR, read when first used).
    user_tasks: task name -> share, added to those of `mixtures.add_user_task`.
    """
    name, shares = _shares(proportions)
    extra = mixtures.all_user_tasks(user_tasks)
    name = mixtures.variant_name(name, cot_ratio, extra)
    logging.info("Released Flan mixture %s", name)
    return register_mixture(name, mixtures.with_cot_ratio(shares, cot_ratio), directory, extra)


def register_all() -> list[str]:
    """flan2022_released, flan2022_released_a and _b over $FLAN_JAX_RELEASED_DIR."""
    return [register_mixture(*_shares(key)) for key in ("released", "a", "b")]


MIXTURE_NAMES = register_all()
