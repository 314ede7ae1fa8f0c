"""A synthetic Flan 2022 collection in the released layout, for measuring the input path at scale.

`write(directory, rows)` writes `<directory>/<submix>/data/train-NNNNN-of-NNNNN.parquet` with
the released string columns, as the real collection is laid out: shards split by size (rows
of every task spread over them), 1,836 task names over the five submixes, task sizes long
tailed (a Zipf law within each submix, as the real counts are), each task in the four
template types, and inputs as long as the real ones (few-shot prompts several times the
zero-shot ones). Text is drawn from a fixed word list so any SentencePiece vocabulary
tokenizes it at a realistic rate.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# submix -> (task names, share of the rows, task_source), after the released collection:
# 1,836 tasks; rows roughly in the real submixes' proportions (NIV2 the largest).
SUBMIXES = {
    "flan2021_submix_original": (66, 0.31, "Flan2021"),
    "t0_submix_original": (193, 0.10, "P3"),
    "niv2_submix_original": (1_554, 0.55, "NIv2"),
    "cot_submix_original": (18, 0.02, "CoT"),
    "dialog_submix_original": (5, 0.02, "Dialog"),
}
TEMPLATE_TYPES = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
# Words per field: log-normal medians (zero-shot inputs, few-shot inputs, targets).
MEDIAN_WORDS = {"zs": 90, "fs": 420, "targets": 6}
MAX_WORDS = {"inputs": 3_000, "targets": 400}
ROWS_PER_SHARD = 50_000
WORDS = np.array(
    "the of and to in a is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when if "
    "so no what up out who can more its about into them than only other time new some could "
    "these two may first then do any like my now over such our man me even most made after "
    "also did many before must through back years where much your way well down should "
    "because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three "
    "question answer options premise hypothesis sentence review positive negative true false "
    "summary article translate english french german number reason step therefore".split()
)


def task_sizes(num_tasks: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Rows per task, Zipf-distributed (exponent 1), at least 4 (one per template type)."""
    weights = 1.0 / np.arange(1, num_tasks + 1)
    sizes = np.maximum(4, np.floor(rows * weights / weights.sum())).astype(np.int64)
    return rng.permutation(sizes)


def _texts(rng: np.random.Generator, counts: np.ndarray) -> list[str]:
    words = WORDS[rng.integers(0, len(WORDS), int(counts.sum()))]
    ends = np.cumsum(counts)
    return [" ".join(words[end - n : end]) for n, end in zip(counts, ends)]


def _lengths(rng: np.random.Generator, median: np.ndarray, limit: int) -> np.ndarray:
    return np.clip(np.round(rng.lognormal(np.log(median), 0.6)), 1, limit).astype(np.int64)


def write(directory: str, rows: int = 2_000_000, seed: int = 0) -> dict[str, int]:
    """Writes the collection (about `rows` rows in all); returns rows per submix."""
    rng = np.random.default_rng(seed)
    written = {}
    for submix, (num_tasks, share, source) in SUBMIXES.items():
        sizes = task_sizes(num_tasks, int(rows * share), rng)
        names = np.array([f"{source.lower()}_task{i:04d}_synthetic" for i in range(num_tasks)])
        task_of_row = rng.permutation(np.repeat(np.arange(num_tasks), sizes))
        template_of_row = rng.integers(0, len(TEMPLATE_TYPES), len(task_of_row))
        data_dir = os.path.join(directory, submix, "data")
        os.makedirs(data_dir, exist_ok=True)
        num_shards = max(1, -(-len(task_of_row) // ROWS_PER_SHARD))
        for shard, rows_of_shard in enumerate(
            np.array_split(np.arange(len(task_of_row)), num_shards)
        ):
            tasks, templates = task_of_row[rows_of_shard], template_of_row[rows_of_shard]
            few_shot = templates >= 2
            median = np.where(few_shot, MEDIAN_WORDS["fs"], MEDIAN_WORDS["zs"])
            table = pa.table(
                {
                    "inputs": _texts(rng, _lengths(rng, median, MAX_WORDS["inputs"])),
                    "targets": _texts(
                        rng,
                        _lengths(
                            rng, np.full(len(tasks), MEDIAN_WORDS["targets"]), MAX_WORDS["targets"]
                        ),
                    ),  # fmt: skip
                    "task_source": [source] * len(tasks),
                    "task_name": names[tasks].tolist(),
                    "template_type": [TEMPLATE_TYPES[t] for t in templates],
                }
            )
            name = f"train-{shard:05d}-of-{num_shards:05d}.parquet"
            pq.write_table(table, os.path.join(data_dir, name))
        written[submix] = len(task_of_row)
    return written
