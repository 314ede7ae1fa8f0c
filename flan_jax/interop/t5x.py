"""T5X T5 v1.1 / Flan-T5 checkpoints -> flan_jax parameters, Adafactor state and step.

Two T5X layouts are read, both as T5X's own checkpoints.py writes them:
- legacy: a `checkpoint` msgpack file {'version': 3, 'optimizer': {'target': params, 'state':
  {'step', 'param_states'}}} whose large leaves are TensorStore zarr specs with kvstore paths
  relative to the checkpoint directory (one directory per array, named like
  `target.encoder.layers_0.attention.key.kernel`) and whose small ones are inline arrays;
- Orbax: `checkpoint_<step>/state/`, the same tree saved by Orbax's PyTreeCheckpointHandler
  (OCDBT).
T5X's T5 names its parameters as flan_jax does; only the attention kernels differ, stored with
the heads joined ([d_model, heads * d_kv], [heads * d_kv, d_model]), which a reshape splits.
A scanned checkpoint (`scan_layers=True`: `encoder.layers.<name>`, the layers stacked on T5X's
`param_scan_axis`) is read as the per-layer one, slots included; either layout becomes
flan_jax's scanned or unscanned parameters. Checkpoints are read locally or on gs:// (the
msgpack file and Orbax's metadata through flan_jax.paths, arrays through TensorStore).
A checkpoint holds no config: the sizes come from the array shapes, relative attention's max
distance is T5's 128 unless a model gin file says otherwise. The command that imports a T5X
checkpoint into a flan_jax model dir is flan_jax.convert.
"""

import copy
import dataclasses
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from etils import epath
from flax import serialization, traverse_util

from flan_jax import optim, paths
from flan_jax.axis_names import EMBED
from flan_jax.models.base import EncoderDecoderModel
from flan_jax.models.t5 import T5Config, scan_params

MSGPACK_FILE = "checkpoint"
# T5X's Adafactor keeps these per parameter; the unused ones hold a (1,) placeholder.
SLOTS = ("v_row", "v_col", "v", "m")
_KVSTORE_DRIVERS = ("file", "gfile", "gcs")


@dataclasses.dataclass(frozen=True)
class T5XCheckpoint:
    """A T5X checkpoint's contents as numpy, keyed by T5X's dotted names."""

    # "encoder.layers_0.attention.key.kernel" -> an array, or an opened TensorStore / Orbax
    # leaf (its shape known, its data read by np.asarray)
    target: dict[str, Any]
    param_states: dict[str, dict[str, Any]]  # the same names -> {slot: array}
    step: int
    # Per-layer names read from a scanned stack: T5X factored those by its logical rules
    # (v_row keeps `embed`), not by its size heuristic, as it does arrays of rank <= 2.
    scanned: frozenset[str] = frozenset()


def is_orbax_checkpoint(path: str | os.PathLike) -> bool:
    """An Orbax-based T5X checkpoint dir: `state/` without flan_jax's `data/` beside it."""
    directory = paths.path(path, "T5X checkpoint")
    return (directory / "state").is_dir() and not (directory / "data").is_dir()


def read_checkpoint(path: str | os.PathLike) -> T5XCheckpoint:
    """Every array of a legacy or Orbax T5X checkpoint directory (local or gs://); refuses
    what is not T5X's Adafactor train state, naming the key."""
    directory = paths.path(path, "T5X checkpoint")
    if (directory / MSGPACK_FILE).is_file():
        tree = _read_legacy(directory)
    elif is_orbax_checkpoint(directory):
        tree = _read_orbax(directory / "state")
    else:
        raise FileNotFoundError(
            f"{path} is not a T5X checkpoint: it has neither a `{MSGPACK_FILE}` msgpack file "
            "nor an Orbax `state/` directory; pass the checkpoint_<step> directory"
        )
    _refuse_unknown(tree, {"target", "state"}, "")
    state = tree.get("state", {})
    _refuse_unknown(state, {"step", "param_states"}, "state.")
    if "target" not in tree or "step" not in state:
        raise ValueError(f"T5X checkpoint {path} lacks `target` or `state.step`")
    target = _dotted(tree["target"])
    param_states: dict[str, dict[str, np.ndarray]] = {}
    for name, value in _dotted(state.get("param_states", {})).items():
        key, slot = name.rsplit(".", 1)
        if slot not in SLOTS:
            raise ValueError(
                f"T5X optimizer state state.param_states.{name} is not Adafactor's "
                f"({', '.join(SLOTS)}); only Adafactor checkpoints are read"
            )
        param_states.setdefault(key, {})[slot] = value
    scanned = set()
    for stack in ("encoder", "decoder"):
        scanned |= _unstack_layers(stack, target, param_states)
    return T5XCheckpoint(target, param_states, int(np.asarray(state["step"])), frozenset(scanned))


def _unstack_layers(stack: str, target: dict, param_states: dict) -> set[str]:
    """A scanned T5X stack (`scan_layers=True`: `encoder.layers.<name>`, every layer's array
    stacked on one axis, T5X's `param_scan_axis`, 1 by default) rewritten in place as the
    per-layer `encoder.layers_<i>.<name>` of an unscanned checkpoint, slots included; the
    axis is the one of `layers.pre_mlp_layer_norm.scale` that is not d_model. Returns the
    per-layer names written."""
    prefix = f"{stack}.layers."
    stacked = sorted(k for k in target if k.startswith(prefix))
    if not stacked:
        return set()
    per_layer_relpos = f"{prefix}relative_posemb.rel_embedding"
    if per_layer_relpos in target:
        raise ValueError(
            f"T5X checkpoint holds target.{per_layer_relpos}: a relative-position table per "
            "layer (T5X's scalable_t5), which T5 v1.1 (one table per stack, "
            f"{stack}.relpos_bias) does not have"
        )
    norm = f"{prefix}pre_mlp_layer_norm.scale"
    if norm not in target or "token_embedder.embedding" not in target:
        raise ValueError(f"scanned T5X checkpoint has no target.{norm} to count its layers by")
    d_model = target["token_embedder.embedding"].shape[-1]
    shape = tuple(target[norm].shape)
    if len(shape) != 2 or d_model not in shape:
        raise ValueError(f"T5X target.{norm} has shape {shape}: not d_model {d_model} stacked")
    axis = 0 if shape[0] != d_model else 1
    written = set()
    for key in stacked:
        value, name = target.pop(key), key[len(prefix) :]
        if len(value.shape) <= axis or value.shape[axis] != shape[axis]:
            raise ValueError(
                f"T5X target.{key} has shape {tuple(value.shape)}: not {shape[axis]} layers "
                f"stacked on axis {axis}, as {norm} is"
            )
        slots = param_states.pop(key, {})
        slot_axes = {
            slot: _layer_axis(v, value.shape, axis, key, slot) for slot, v in slots.items()
        }
        for i in range(value.shape[axis]):
            layer_key = f"{stack}.layers_{i}.{name}"
            target[layer_key] = _layer(value, axis, i)
            param_states[layer_key] = {
                slot: v if slot_axes[slot] is None else _layer(v, slot_axes[slot], i)
                for slot, v in slots.items()
            }
            written.add(layer_key)
    return written


def _layer_axis(slot: Any, shape: tuple[int, ...], axis: int, key: str, name: str):
    """The layer axis of a stacked parameter's slot: `axis` of a full one, the same axis
    shifted past the one a factored v_row / v_col dropped, None for a (1,) placeholder."""
    if tuple(slot.shape) == tuple(shape):
        return axis
    if tuple(slot.shape) == (1,):
        return None
    # A square layer drops either of its axes alike; the layer axis lands the same.
    landed = {
        axis - (a < axis)
        for a in range(len(shape))
        if a != axis and np.delete(shape, a).tolist() == list(slot.shape)
    }
    if len(landed) != 1:
        raise ValueError(
            f"T5X state.param_states.{key}.{name} has shape {tuple(slot.shape)} for a "
            f"{tuple(shape)} parameter stacked on axis {axis}: not factored over one axis "
            "other than the layers'"
        )
    return landed.pop()


def _layer(value: Any, axis: int, i: int) -> Any:
    """Layer `i` of an array stacked on `axis`, read lazily where `value` is (TensorStore
    views index without reading)."""
    if isinstance(value, _Deferred):
        shape = value.shape[:axis] + value.shape[axis + 1 :]
        return _Deferred(shape, lambda: np.take(np.asarray(value), i, axis=axis))
    return value[(slice(None),) * axis + (i,)]


def _read_legacy(directory: epath.Path) -> dict:
    path = os.fspath(directory)
    try:
        contents = serialization.msgpack_restore((directory / MSGPACK_FILE).read_bytes())
    except Exception as e:
        raise ValueError(f"{path}/{MSGPACK_FILE} is not a T5X msgpack file: {e}") from e
    version = contents.get("version") if isinstance(contents, dict) else None
    if version not in (2, 3):
        raise ValueError(
            f"T5X checkpoint {path} has version={version!r}; versions 2 and 3 (T5X since "
            "2021) are read"
        )
    _refuse_unknown(contents, {"version", "optimizer"}, "")
    return _map_leaves(contents["optimizer"], lambda name, leaf: _legacy_leaf(path, name, leaf), "")


def _read_orbax(state_dir: epath.Path) -> dict:
    import orbax.checkpoint as ocp

    checkpointer = ocp.PyTreeCheckpointer()
    restored: list[dict] = []  # the whole tree, restored once, when an array is first read

    def leaf(name, metadata):
        def read():
            if not restored:
                restored.append(_dotted(checkpointer.restore(state_dir)))
            return restored[0][name]

        return _Deferred(tuple(metadata.shape), read)

    return _map_leaves(checkpointer.metadata(state_dir).item_metadata.tree, leaf, "")


class _Deferred:
    """An array whose shape is known before its data is read (by np.asarray)."""

    def __init__(self, shape: tuple[int, ...], read):
        self.shape, self._read = shape, read

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self._read(), dtype)


def _map_leaves(tree: Mapping, fn, prefix: str) -> dict:
    """`tree` with each array leaf (or TensorStore spec) replaced by fn(dotted name, leaf)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not _is_spec(value):
            out[key] = _map_leaves(value, fn, f"{name}.")
        else:
            out[key] = fn(name, value)
    return out


def _is_spec(value: Mapping) -> bool:
    return {"driver", "kvstore"} <= set(value)


def _legacy_leaf(directory: str, name: str, leaf: Any):
    if isinstance(leaf, Mapping):
        return _read_tensorstore(directory, name, leaf)
    return np.asarray(leaf)


def _read_tensorstore(directory: str, name: str, spec: Mapping):
    """One TensorStore leaf, its relative kvstore path resolved against `directory`."""
    import tensorstore as ts

    spec = copy.deepcopy(dict(spec))
    driver = spec["kvstore"].get("driver")
    # tensorstore < 0.1.14 wrote the path beside the kvstore instead of inside it.
    relative = spec["kvstore"].get("path", spec.pop("path", None))
    if spec.get("driver") != "zarr" or driver not in _KVSTORE_DRIVERS or relative is None:
        raise ValueError(
            f"T5X leaf {name} has TensorStore spec {spec}; only zarr arrays on a "
            f"{'/'.join(_KVSTORE_DRIVERS)} kvstore with a relative path are read"
        )
    metadata = spec.get("metadata", {})
    if spec.get("dtype") == "uint16" or metadata.get("dtype") == "<u2":
        raise ValueError(f"T5X leaf {name} is uint16 (bfloat16 of a version-2 checkpoint)")
    # Chunking and compression are read from the array's own .zarray, as T5X does.
    for field in ("chunks", "compressor"):
        metadata.pop(field, None)
    bucket = re.fullmatch(r"gs://([^/]+)/?(.*)", directory)
    if bucket:
        path = "/".join(p for p in (bucket.group(2).rstrip("/"), relative) if p)
        spec["kvstore"] = {"driver": "gcs", "bucket": bucket.group(1), "path": path}
    else:
        spec["kvstore"] = {"driver": "file", "path": os.path.join(directory, relative)}
    try:  # opened, not read: its shape is known now, its data is read by np.asarray
        return ts.open(spec, open=True, read=True).result()
    except ValueError as e:
        raise ValueError(f"T5X leaf {name}: cannot read {spec['kvstore']}: {e}") from e


def _refuse_unknown(tree: Mapping, known: set[str], prefix: str) -> None:
    unknown = sorted(set(tree) - known)
    if unknown:
        raise ValueError(
            f"T5X checkpoint holds {prefix}{unknown[0]}, which flan_jax does not read "
            f"(it reads {', '.join(prefix + k for k in sorted(known))})"
        )


def _dotted(tree: Mapping) -> dict[str, np.ndarray]:
    return {".".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def config_from_target(target: Mapping[str, np.ndarray], *, scan_layers: bool = False) -> T5Config:
    """The T5Config whose parameters have the checkpoint's shapes (max distance: 128)."""

    def shape(key):
        if key not in target:
            raise ValueError(
                f"T5X checkpoint has no target.{key}; is it a T5 v1.1 / Flan-T5 checkpoint "
                "(gated-GELU MLP, untied logits_dense)?"
            )
        return target[key].shape

    def layers(stack):
        return sum(
            bool(re.fullmatch(rf"{stack}\.layers_\d+\.pre_mlp_layer_norm\.scale", k))
            for k in target
        )

    vocab_size, d_model = shape("token_embedder.embedding")
    num_heads, num_buckets = shape("encoder.relpos_bias.rel_embedding")
    shape("decoder.logits_dense.kernel")
    return T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        num_heads=num_heads,
        d_kv=shape("encoder.layers_0.attention.query.kernel")[-1] // num_heads,
        d_ff=shape("encoder.layers_0.mlp.wi_0.kernel")[-1],
        num_encoder_layers=layers("encoder"),
        num_decoder_layers=layers("decoder"),
        relative_attention_num_buckets=num_buckets,
        scan_layers=scan_layers,
    )


def _unscanned_shapes(config: T5Config) -> dict[str, tuple[int, ...]]:
    """flan_jax's per-layer parameter shapes for `config`, by T5X's dotted names."""
    return {k: shape for k, (shape, _) in _unscanned_params(config).items()}


def _unscanned_params(config: T5Config) -> dict[str, tuple[tuple[int, ...], tuple]]:
    """(shape, logical axis names) of flan_jax's per-layer parameters for `config`, by T5X's
    dotted names."""
    model = EncoderDecoderModel(dataclasses.replace(config, scan_layers=False))
    boxed = _dotted(jax.eval_shape(model.init, jax.random.key(0)))
    return {k: (tuple(v.value.shape), tuple(v.names)) for k, v in boxed.items()}


def _to_shape(value: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """`value` in flan_jax's `shape`: as is, or a joined-heads kernel split by a reshape."""
    if value.shape == shape:
        return value
    splits = value.ndim == 2 and any(
        value.shape == (math.prod(shape[:k]), math.prod(shape[k:])) for k in range(len(shape))
    )
    if not splits:
        raise ValueError(
            f"T5X {name} has shape {value.shape}; this model's parameter is {shape}. Check "
            "the model config (--model_gin_file) matches the checkpoint."
        )
    return value.reshape(shape)


def params_from_t5x(target: Mapping[str, np.ndarray], config: T5Config) -> dict:
    """flan_jax's "params" tree (float32, scanned if config.scan_layers) from T5X's target.
    Every array must be used: a missing or extra key is refused by name."""
    want = _unscanned_shapes(config)
    _check_same_keys(target.keys(), want.keys(), "target.")
    flat = {
        tuple(k.split(".")): _to_shape(np.asarray(target[k]), shape, f"target.{k}").astype(
            np.float32
        )
        for k, shape in want.items()
    }
    params = traverse_util.unflatten_dict(flat)
    return scan_params(params, config) if config.scan_layers else params


def _check_same_keys(have, want, prefix: str) -> None:
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing:
        raise ValueError(f"T5X checkpoint has no {prefix}{missing[0]}, which this model needs")
    if extra:
        raise ValueError(
            f"T5X checkpoint holds {prefix}{extra[0]}, which this model does not have; check "
            "its layer counts (--model_gin_file) or that it is a T5 v1.1 checkpoint"
        )


def _second_moments(
    slots: Mapping[str, Any],
    t5x_shape: tuple[int, ...],
    param: tuple[tuple[int, ...], tuple],
    by_rules: bool,
    name: str,
) -> dict[str, np.ndarray]:
    """One parameter's Adafactor second moments from T5X's slots, in flan_jax's layout
    (`param`: shape and logical axes): "v", the full estimate (T5X's `v`, or
    v_row (x) v_col / mean(v_row), the one T5X's next update scales by), and where flan_jax
    can factor it (optim.factoring), "v_row" / "v_col": T5X's own, reshaped, if T5X factored
    it, else the means of "v". T5X's v_row keeps the dim its heuristic picks (the smaller;
    ties: the first) or, `by_rules` (a scanned stack), the `embed` dim."""
    shape, names = param
    plan = optim.factoring(shape, names)
    v, v_row, v_col = (slots.get(k) for k in ("v", "v_row", "v_col"))
    out = {}
    if v is not None and tuple(v.shape) == tuple(t5x_shape):
        out["v"] = np.asarray(v, np.float32).reshape(shape)
    elif plan.rows and len(t5x_shape) == 2 and v_row is not None and v_col is not None:
        groups = sorted((plan.rows, plan.columns))  # flan_jax's dims of T5X's two
        if by_rules:
            kept = next((k for k, g in enumerate(groups) if EMBED in [names[d] for d in g]), 0)
        else:
            kept = int(t5x_shape[0] > t5x_shape[1])
        if (tuple(v_row.shape), tuple(v_col.shape)) == ((t5x_shape[kept],), (t5x_shape[1 - kept],)):
            v_row, v_col = np.asarray(v_row, np.float32), np.asarray(v_col, np.float32)
            full = np.expand_dims(v_row, 1 - kept) * np.expand_dims(v_col, kept) / v_row.mean()
            row, col = (v_row, v_col) if groups[kept] == plan.rows else (v_col, v_row)
            return {
                "v": full.reshape(shape),
                "v_row": row.reshape(plan.row_shape(shape)),
                "v_col": col.reshape(plan.column_shape(shape)),
            }
    if "v" not in out:
        shapes = {k: tuple(getattr(s, "shape", ())) for k, s in slots.items()}
        raise ValueError(
            f"T5X state.param_states.{name} has slots {shapes} for a {tuple(t5x_shape)} "
            "parameter: neither a full nor a factored Adafactor second moment as T5X keeps it"
        )
    if plan.rows:
        out["v_row"] = out["v"].mean(axis=plan.columns)
        out["v_col"] = out["v"].mean(axis=plan.rows)
    return out


def _slot_trees(checkpoint: T5XCheckpoint, config: T5Config) -> dict[str, dict]:
    """T5X's slots as trees in flan_jax's parameter layout (scanned like `config`): "v" the
    full second-moment estimate, "v_row"/"v_col" the factored ones (see _second_moments;
    (1,) where flan_jax cannot factor), "m"."""
    trees: dict[str, dict] = {slot: {} for slot in SLOTS}
    placeholder = np.zeros((1,), np.float32)
    for name, param in _unscanned_params(config).items():
        if name not in checkpoint.param_states:
            raise ValueError(f"T5X checkpoint has no state.param_states.{name}")
        slots = checkpoint.param_states[name]
        t5x_shape = tuple(checkpoint.target[name].shape)
        key = tuple(name.split("."))
        moments = _second_moments(slots, t5x_shape, param, name in checkpoint.scanned, name)
        for slot in ("v", "v_row", "v_col"):
            trees[slot][key] = moments.get(slot, placeholder)
        m = np.asarray(slots.get("m", placeholder), np.float32)
        trees["m"][key] = m.reshape(param[0]) if m.shape == t5x_shape else placeholder
    unflat = {slot: traverse_util.unflatten_dict(tree) for slot, tree in trees.items()}
    if config.scan_layers:
        unflat = {slot: scan_params(tree, config) for slot, tree in unflat.items()}
    return {slot: traverse_util.flatten_dict(tree) for slot, tree in unflat.items()}


def opt_state_from_t5x(
    checkpoint: T5XCheckpoint,
    config: T5Config,
    optimizer: optax.GradientTransformation,
    params: Any,
) -> Any:
    """`optimizer`'s state for `params` (flan_jax's layout for `config`) from T5X's Adafactor
    slots: factored second moments are T5X's v_row / v_col, reshaped, where T5X factored the
    parameter (flan_jax factors each as T5X does), else the means of its full `v` over the
    factored axes; T5X's momentum `m` goes into optax's EMA; each count is the step."""
    optimizer = optim.for_params(optimizer, _param_axes(config))
    trees = _slot_trees(checkpoint, config)
    step = np.asarray(checkpoint.step, np.int32)
    with_momentum = [
        name
        for name, slots in checkpoint.param_states.items()
        if np.shape(slots.get("m", ())) == checkpoint.target[name].shape
    ]

    def fill(state):
        if isinstance(state, optax.FactoredState):
            return _fill_factored(state, step, trees)
        if isinstance(state, optax.EmaState):
            if not with_momentum:
                raise ValueError(
                    "the optimizer keeps momentum but the T5X checkpoint has none (its "
                    "state.param_states.*.m are placeholders); use one without momentum"
                )
            return state._replace(count=step, ema=_tree_like(state.ema, trees["m"], "m"))
        if isinstance(state, tuple) and not hasattr(state, "_fields"):
            return tuple(fill(s) for s in state)
        if hasattr(state, "_fields") and set(state._fields) == {"count"}:
            return state._replace(count=step)
        if not jax.tree.leaves(state):
            return state
        raise ValueError(
            f"optimizer state {type(state).__name__} has no counterpart in a T5X Adafactor "
            "checkpoint; use flan_jax.optim.adafactor"
        )

    abstract = jax.eval_shape(optimizer.init, params)
    if with_momentum and not any(
        isinstance(s, optax.EmaState)
        for s in jax.tree.leaves(abstract, is_leaf=lambda s: isinstance(s, optax.EmaState))
    ):
        raise ValueError(
            f"T5X state.param_states.{with_momentum[0]}.m holds momentum, which this "
            "optimizer does not keep; use optim.adafactor(momentum=...)"
        )
    return fill(abstract)


def _tree_like(abstract: Any, flat: Mapping[tuple, np.ndarray], slot: str) -> Any:
    """`flat`'s arrays in `abstract`'s structure, refusing any whose shape differs."""
    out = {}
    for key, leaf in traverse_util.flatten_dict(abstract).items():
        if flat[key].shape != leaf.shape:
            raise ValueError(
                f"T5X state.param_states.{'.'.join(key)}.{slot} has shape {flat[key].shape}; "
                f"the optimizer keeps {leaf.shape}"
            )
        out[key] = flat[key].astype(leaf.dtype)
    return traverse_util.unflatten_dict(out)


def _fill_factored(state: optax.FactoredState, step: np.ndarray, trees: dict) -> Any:
    rows, cols, full = {}, {}, {}
    placeholder = np.zeros((1,), np.float32)
    for key, want_v in traverse_util.flatten_dict(state.v).items():
        if want_v.shape == trees["v"][key].shape:  # not factored in flan_jax
            rows[key], cols[key], full[key] = placeholder, placeholder, trees["v"][key]
        else:
            rows[key], cols[key], full[key] = trees["v_row"][key], trees["v_col"][key], placeholder
    return state._replace(
        count=step,
        v_row=_tree_like(state.v_row, rows, "v_row"),
        v_col=_tree_like(state.v_col, cols, "v_col"),
        v=_tree_like(state.v, full, "v"),
    )


def _param_axes(config: T5Config) -> Any:
    """The logical axes (PartitionSpecs) of the parameters of `config`'s model."""
    model = EncoderDecoderModel(config)
    return nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0)))


def read_train_state(
    path: str,
    config: T5Config | None = None,
    optimizer: optax.GradientTransformation | None = None,
    *,
    scan_layers: bool = False,
) -> tuple[T5Config, dict, Any, int]:
    """(config, params, optimizer state, step) of a T5X checkpoint, as numpy, for a trainer
    to continue from. `config` defaults to the one the shapes imply (with `scan_layers`);
    `optimizer` to flan_jax.optim.adafactor's defaults (its state is the same for any
    constant learning rate)."""
    checkpoint = read_checkpoint(path)
    config = config or config_from_target(checkpoint.target, scan_layers=scan_layers)
    params = params_from_t5x(checkpoint.target, config)
    optimizer = optimizer or optim.adafactor(1.0)
    return (
        config,
        params,
        opt_state_from_t5x(checkpoint, config, optimizer, params),
        checkpoint.step,
    )
