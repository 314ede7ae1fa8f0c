"""The partitioned decode function that evaluation, inference and the AOT check all run."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax

from flan_jax import partitioning


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
    """How `BaseModel.predict_batch` decodes: greedy (the defaults), sampled (temperature >
    0, with top_k / top_p; num_decodes samples per row) or beam search (num_beams)."""

    max_decode_length: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    num_decodes: int = 1
    num_beams: int | None = None
    seed: int = 0


def predict_function(
    model, partitioner: partitioning.Partitioner, params_shardings: Any, settings: DecodeSettings
) -> Callable:
    """`predict(params, batch, batch_index) -> tokens`, jitted over the partitioner's mesh,
    tokens replicated so every host reads them. Batch `batch_index` samples with the key
    `fold_in(key(seed), batch_index)`. One function per setting and layout, so callers with
    equal settings (e.g. suites of equal lengths) compile once."""
    return _cached(
        model,
        partitioner,
        jax.tree.structure(params_shardings),
        tuple(jax.tree.leaves(params_shardings)),
        settings,
    )


@functools.cache
def _cached(model, partitioner, params_treedef, params_sharding_leaves, settings):
    def predict(params, batch, batch_index):
        return model.predict_batch(
            params,
            batch,
            rng=jax.random.fold_in(jax.random.key(settings.seed), batch_index),
            max_decode_length=settings.max_decode_length,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            num_decodes=settings.num_decodes,
            num_beams=settings.num_beams,
        )

    replicated = partitioner.replicated_sharding()
    params_shardings = jax.tree.unflatten(params_treedef, params_sharding_leaves)
    return partitioner.partition(
        predict,
        in_shardings=(params_shardings, partitioner.batch_sharding(), replicated),
        out_shardings=replicated,
    )
