"""Meshes, logical-axis rules and shardings: what T5X's pjit partitioner did, on `jax.jit`.

Models name their axes (`batch`, `embed`, `mlp`, ...); the rules here map those names to the
mesh axes `replica` (across slices), `data` and `model`. Nothing here knows about layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from flan_jax import optim
from flan_jax.axis_names import BATCH, EMBED, HEADS, KV, LAYERS, LENGTH, MLP, RELPOS_BUCKETS, VOCAB
from flan_jax.models import scan

LogicalRules = Sequence[tuple[str, Any]]


def logical_axis_rules(
    parameter_partitioning_dims: int = 1, activation_partitioning_dims: int = 1
) -> tuple[tuple[str, Any], ...]:
    """T5X's standard rules: 1D shards heads/mlp/vocab over `model`, 2D also shards `embed`.

    A logical name may appear twice; flax takes the first rule whose mesh axis is still free
    in that array, so `embed` lands on `data` for parameters and stays unsharded (or on
    `model`) for activations, whose `batch` already holds `data`. Batches split over slices
    too (`replica`); parameters are sharded within a slice and copied across slices, so only
    gradients cross the slow network between slices.
    """
    if parameter_partitioning_dims not in (1, 2) or activation_partitioning_dims not in (1, 2):
        raise ValueError(
            "partitioning dims must be 1 or 2, got parameter_partitioning_dims="
            f"{parameter_partitioning_dims}, activation_partitioning_dims="
            f"{activation_partitioning_dims}"
        )
    rules = [
        (BATCH, ("replica", "data")),
        (VOCAB, "model"),
        (MLP, "model"),
        (HEADS, "model"),
        (KV, None),
        (LENGTH, None),
        (LAYERS, None),
        (RELPOS_BUCKETS, None),
    ]
    if activation_partitioning_dims == 2:
        rules.append((EMBED, "model"))
    if parameter_partitioning_dims == 2:
        rules.append((EMBED, "data"))
    rules.append((EMBED, None))
    return tuple(rules)


def check_axis_names(names: Iterable[str | None], rules: LogicalRules) -> None:
    """Raises naming each logical axis name that no rule maps: flax would silently replicate
    that dimension (None is an explicitly unnamed, replicated dimension)."""
    known = {name for name, _ in rules}
    unknown = sorted({n for n in names if n is not None} - known)
    if unknown:
        raise ValueError(
            f"logical axis names {unknown} have no partitioning rule (rules cover "
            f"{sorted(known)}): use a flan_jax.axis_names constant or add a rule"
        )


def create_mesh(
    model_parallel_size: int = 1,
    mesh_shape: Sequence[int] | None = None,
    num_slices: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> jax.sharding.Mesh:
    """A (`replica`, `data`, `model`) mesh over all devices.

    `replica` spans the `num_slices` TPU slices (linked by the data-center network); `data`
    and `model` (given by `model_parallel_size`, or `mesh_shape` = (data, model)) lie within
    one slice, `model` innermost so it gets the fastest links.
    """
    devices = list(devices if devices is not None else jax.devices())
    if num_slices < 1 or len(devices) % num_slices:
        raise ValueError(
            f"num_slices={num_slices} must divide the number of devices ({len(devices)})."
        )
    per_slice = len(devices) // num_slices
    if mesh_shape is None:
        if model_parallel_size < 1 or per_slice % model_parallel_size:
            raise ValueError(
                f"model_parallel_size={model_parallel_size} must divide the {per_slice} devices "
                f"of a slice; pick one of {_divisors(per_slice)}."
            )
        mesh_shape = (per_slice // model_parallel_size, model_parallel_size)
    mesh_shape = tuple(mesh_shape)
    if len(mesh_shape) != 2 or int(np.prod(mesh_shape)) != per_slice:
        raise ValueError(
            f"mesh_shape={mesh_shape} must be (data, model) with data * model == "
            f"{per_slice} devices per slice ({len(devices)} devices, {num_slices} slices)."
        )
    # On a TPU torus an axis may span part of a physical axis (model 16 of an 8x8x8 slice).
    if num_slices > 1 and getattr(devices[0], "slice_index", None) is not None:
        grid = mesh_utils.create_hybrid_device_mesh(
            (1, *mesh_shape), (num_slices, 1, 1), devices=devices, allow_split_physical_axes=True
        )
    else:
        grid = mesh_utils.create_device_mesh(
            (num_slices, *mesh_shape), devices=devices, allow_split_physical_axes=True
        )
    return jax.sharding.Mesh(grid, ("replica", "data", "model"), axis_types=(AxisType.Auto,) * 3)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclasses.dataclass(frozen=True)
class Partitioner:
    """A mesh plus logical rules: turns logical specs into shardings and jits under both."""

    mesh: jax.sharding.Mesh
    rules: LogicalRules

    @property
    def data_parallel_size(self) -> int:
        return self.mesh.shape["replica"] * self.mesh.shape["data"]

    @contextlib.contextmanager
    def context(self):
        """Mesh and rules in scope, as `nn.with_logical_constraint` needs at trace time."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def sharding(self, logical_spec: PartitionSpec | Sequence[str | None]) -> NamedSharding:
        spec = nn.logical_to_mesh_axes(tuple(logical_spec), self.rules)
        return NamedSharding(self.mesh, spec)

    def shardings(self, logical_specs: Any) -> Any:
        """Maps a tree of logical PartitionSpecs to NamedShardings on this mesh."""
        return nn.logical_to_mesh_sharding(logical_specs, self.mesh, self.rules)

    def batch_sharding(self) -> NamedSharding:
        return self.sharding(("batch",))

    def replicated_sharding(self) -> NamedSharding:
        """On every device: for outputs every host reads, such as predictions and metrics."""
        return NamedSharding(self.mesh, PartitionSpec())

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.data_parallel_size:
            raise ValueError(
                f"batch size {batch_size} is not divisible by the data-parallel size "
                f"{self.data_parallel_size} (replica x data of mesh {dict(self.mesh.shape)}); "
                f"use a multiple of {self.data_parallel_size} or a larger model_parallel_size."
            )

    def partition(
        self,
        fn: Callable,
        in_shardings: Any,
        out_shardings: Any,
        static_argnames: Sequence[str] = (),
        donate_argnums: Sequence[int] = (),
    ) -> Callable:
        """`jax.jit` with shardings, traced and run with the mesh and rules in scope."""
        jitted = jax.jit(
            fn,
            in_shardings=in_shardings,
            out_shardings=out_shardings,
            static_argnames=tuple(static_argnames),
            donate_argnums=tuple(donate_argnums),
        )

        @functools.wraps(fn)
        def run(*args, **kwargs):
            with self.context():
                return jitted(*args, **kwargs)

        run.lower = lambda *a, **k: _lower(self, jitted, *a, **k)
        return run


def _lower(partitioner: Partitioner, jitted, *args, **kwargs):
    with partitioner.context():
        return jitted.lower(*args, **kwargs)


def check_divisible(abstract_tree: Any, shardings: Any) -> None:
    """Names every array whose dimension does not divide the mesh axes it is sharded over."""
    problems = []

    def visit(path, leaf, sharding):
        for dim, axes in zip(leaf.shape, sharding.spec):
            axes = (axes,) if isinstance(axes, str) else (axes or ())
            size = int(np.prod([sharding.mesh.shape[a] for a in axes])) if axes else 1
            if dim % size:
                problems.append(
                    f"{jax.tree_util.keystr(path)} shape {tuple(leaf.shape)}: dimension {dim} "
                    f"is not divisible by mesh axes {axes} of size {size}"
                )

    jax.tree_util.tree_map_with_path(visit, abstract_tree, shardings)
    if problems:
        raise ValueError(
            "These arrays cannot be sharded as the logical-axis rules ask:\n  "
            + "\n  ".join(problems)
            + "\nChange the model dimension, the mesh shape, or the rule for that axis."
        )


def optimizer_state_specs(abstract_opt_state: Any, abstract_params: Any, param_specs: Any):
    """Logical specs for optimizer state, derived from the parameters each leaf belongs to.

    A leaf shaped like its parameter takes the parameter's spec; Adafactor's factored
    moments (`v_row`, `v_col`) drop the axes it averaged over (`optim.factoring`); leaves of
    at most one element (step counts, placeholders of unfactored moments) are replicated.
    Any other leaf is an error naming its path: replicating it would copy a parameter-sized
    array onto every device (at 540B, the whole optimizer state on each chip).
    """
    params_by_path = {}
    jax.tree_util.tree_map_with_path(
        lambda p, leaf, spec: params_by_path.__setitem__(
            _path_keys(p), (leaf.shape, spec, scan.is_stacked(p))
        ),
        abstract_params,
        param_specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )

    def spec_for(path, leaf):
        keys = _path_keys(path)
        param = next((keys[i:] for i in range(len(keys)) if keys[i:] in params_by_path), None)
        if param is not None:
            shape, spec, stacked = params_by_path[param]
            field = keys[len(keys) - len(param) - 1] if len(param) < len(keys) else None
            moment = _moment_spec(tuple(leaf.shape), tuple(shape), tuple(spec), field, stacked)
            if moment is not None:
                return moment
        if np.prod(leaf.shape) <= 1:
            return PartitionSpec()
        belongs = (
            f"is not shaped like its parameter {'/'.join(map(str, param))} {tuple(shape)}"
            if param is not None
            else "ends in no parameter's path"
        )
        raise ValueError(
            f"optimizer state {jax.tree_util.keystr(path)} shape {tuple(leaf.shape)} {belongs}, "
            "so no sharding derives from the parameters; teach "
            "partitioning.optimizer_state_specs this optimizer's state layout"
        )

    return jax.tree_util.tree_map_with_path(spec_for, abstract_opt_state)


def _moment_spec(shape, param_shape, param_spec, field, stacked) -> PartitionSpec | None:
    """The spec of a moment of a parameter, or None if its shape is none of the known ones."""
    param_spec = param_spec + (None,) * (len(param_shape) - len(param_spec))
    if shape == param_shape:
        return PartitionSpec(*param_spec)
    if field in ("v_row", "v_col"):
        # Adafactor factors each layer's array as T5X stores it: v_row drops the column
        # dims, v_col the row dims. Unfactored params keep a (1,) placeholder.
        plan = optim.factoring(param_shape, param_spec, stacked=stacked)
        dropped = plan.columns if field == "v_row" else plan.rows
        if plan.rows and shape == tuple(np.delete(param_shape, dropped)):
            return PartitionSpec(*(s for i, s in enumerate(param_spec) if i not in dropped))
    return None


def _path_keys(path) -> tuple:
    keys = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                keys.append(getattr(entry, attr))
                break
    return tuple(keys)


def abstract_params(model, partitioner: Partitioner) -> tuple[Any, Any]:
    """(the model's parameters as shapes placed on the partitioner's shardings, their logical
    specs), from `jax.eval_shape(model.init)`: nothing is allocated. Restoring, training and
    compiling ahead of time all lay parameters out by this one tree."""
    boxed = jax.eval_shape(model.init, jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.unbox(boxed),
        partitioner.shardings(specs),
    )
    return abstract, specs
