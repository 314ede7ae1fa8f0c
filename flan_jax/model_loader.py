"""One way from a checkpoint directory to (model, parameters on the mesh, vocabulary).

The directory's files tell its format apart:
- `flan_jax`: a model dir (`checkpoints/<step>/`), its checkpoints/ dir or a step dir; the
  model comes from model.gin (an HF import) or config.gin (a training run) beside it, read
  in a gin config of its own, so the caller's global gin config is never touched;
- `hf`: a Hugging Face T5 directory (config.json, safetensors, spiece.model);
- `t5x`: a T5X checkpoint directory (`checkpoint_<step>`: its msgpack `checkpoint` file, or
  Orbax's `state/`), read by flan_jax.interop.t5x; the model comes from the array shapes or
  the model gin file given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import gin
import jax
import numpy as np
import optax
from etils import epath

from flan_jax import checkpoints, cli, partitioning, paths
from flan_jax.interop import hf_t5, t5x
from flan_jax.models.base import EncoderDecoderModel
from flan_jax.trainer import TrainState, is_schedule_state

# What a run sets to start from a checkpoint's parameters alone (gin/runs/finetune.gin).
PARAMS_ONLY = "INITIAL_CHECKPOINT_RESTORE = 'params'"

FLAN_JAX, HF, T5X = "flan_jax", "hf", "t5x"


def checkpoint_format(path: str) -> str:
    """FLAN_JAX, HF or T5X, from the directory's files; FileNotFoundError naming them."""
    where = paths.path(path, "checkpoint")
    if (where / "config.json").is_file():
        return HF
    if (
        (where / t5x.MSGPACK_FILE).is_file() and not (where / "state").is_dir()
    ) or t5x.is_orbax_checkpoint(path):
        return T5X
    for directory in (where, where / "checkpoints"):
        if (directory / "state").is_dir() or (
            directory.is_dir() and any(d.name.isdigit() for d in directory.iterdir())
        ):
            return FLAN_JAX
    raise FileNotFoundError(
        f"checkpoint {path!r} is none of: a flan_jax model dir (checkpoints/<step>/), a step "
        "dir (with state/ and data/), a Hugging Face directory (config.json, "
        "model.safetensors), a T5X checkpoint_<step> dir (a `checkpoint` file, or Orbax's "
        "state/). Pass one of those."
    )


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    model: Any
    params: Any  # laid out on the partitioner's shardings
    vocabulary_path: str | None  # the one given, else the checkpoint's own (None: unknown)

    def vocabulary(self):
        """The seqio SentencePieceVocabulary at `vocabulary_path`, else $FLAN_JAX_VOCAB's."""
        # seqio and tasks pull in TensorFlow: imported only when a vocabulary is asked for.
        import seqio

        from tasks import vocab

        path = self.vocabulary_path or os.environ.get(vocab.FLAN_VOCAB_ENV)
        if not path or ("://" not in path and not os.path.isfile(path)):
            raise FileNotFoundError(
                f"SentencePiece vocabulary {path!r} not found; pass --vocabulary "
                f"PATH/spiece.model (VOCABULARY_PATH in gin) or set ${vocab.FLAN_VOCAB_ENV}"
            )
        return seqio.SentencePieceVocabulary(path)


def load(
    checkpoint: str,
    partitioner: partitioning.Partitioner,
    *,
    model_gin_file: str | None = None,
    vocabulary_path: str | None = None,
) -> LoadedModel:
    """The checkpoint's model, its parameters sharded by `partitioner`, and its vocabulary
    (`vocabulary_path`, else the HF directory's spiece.model or the model gin file's
    VOCABULARY_PATH). `model_gin_file` replaces the model.gin / config.gin beside a
    flan_jax checkpoint."""
    model, own_vocabulary = load_model(checkpoint, model_gin_file=model_gin_file)
    abstract, _ = partitioning.abstract_params(model, partitioner)
    params = restore_params(checkpoint, model, abstract)
    return LoadedModel(model, params, vocabulary_path or own_vocabulary)


def load_model(checkpoint: str, *, model_gin_file: str | None = None):
    """(model, its vocabulary path or None) of a checkpoint, without reading parameters."""
    return _reader(checkpoint).model(checkpoint, model_gin_file)


def restore_params(checkpoint: str, model, abstract_params: Any) -> Any:
    """The checkpoint's parameters laid out as `abstract_params` (shapes with shardings, e.g.
    a trainer's): what a run's INITIAL_CHECKPOINT_PATH starts from."""
    return _reader(checkpoint).params(checkpoint, model, abstract_params)


def restore_train_state(checkpoint: str, model, abstract_state: TrainState, optimizer):
    """The train state a run continues from (parameters, optimizer state, step), laid out as
    `abstract_state` (a trainer's), when the checkpoint has one: a flan_jax training run or
    T5X import, or a T5X checkpoint, whose Adafactor slots become `optimizer`'s state. None
    when it holds parameters alone (a Hugging Face directory or its import). An optimizer
    state that does not fit `optimizer` is refused, naming the leaf."""
    return _reader(checkpoint).state(checkpoint, model, abstract_state, optimizer)


def model_from_gin_file(path: str):
    """(MODEL, VOCABULARY_PATH or None) that a gin model file defines, parsed in a gin config
    of its own; the global config is left as it was."""
    with cli.separate_gin_config():
        cli.parse_gin([path], [])
        try:
            model = gin.query_parameter("%MODEL")
        except ValueError:
            raise ValueError(
                f"{path} defines no MODEL; use a model file such as gin/models/t5_1_1/base.gin "
                "or the model.gin written by `python -m flan_jax.convert import`"
            ) from None
        try:
            vocabulary_path = gin.query_parameter("%VOCABULARY_PATH")
        except ValueError:
            vocabulary_path = None
        return model.scoped_configurable_fn(), vocabulary_path


def model_gin_for_checkpoint(checkpoint: str) -> str:
    """The gin file describing a flan_jax checkpoint's model: model.gin (written by the HF
    import) or config.gin (written by training) in the checkpoint's model dir."""
    path = paths.path(checkpoint, "checkpoint")
    # checkpoint may be the model dir, its checkpoints/ dir or a checkpoints/<step> dir.
    for directory in (path, path.parent, path.parent.parent):
        for name in ("model.gin", "config.gin"):
            if (directory / name).is_file():
                return os.fspath(directory / name)
    raise FileNotFoundError(
        f"no model.gin or config.gin next to checkpoint {checkpoint!r}; pass the model's gin "
        "file (--model_gin_file, or MODEL_GIN_FILE in gin), e.g. gin/models/t5_1_1/base.gin"
    )


def _flan_jax_model(checkpoint: str, model_gin_file: str | None):
    return model_from_gin_file(model_gin_file or model_gin_for_checkpoint(checkpoint))


def _hf_model(checkpoint: str, model_gin_file: str | None):
    if model_gin_file:
        raise ValueError(
            f"{checkpoint} is a Hugging Face directory: its config.json defines the model, so "
            f"drop the model gin file {model_gin_file!r}"
        )
    config = hf_t5.read_hf_config(checkpoint)
    vocabulary = paths.path(checkpoint, "checkpoint") / hf_t5.VOCABULARY_FILE
    return EncoderDecoderModel(config), os.fspath(vocabulary) if vocabulary.is_file() else None


def flan_jax_step_dir(path: str | os.PathLike) -> epath.Path:
    """The step directory of a flan_jax checkpoint: `path` itself (a step dir), else the
    latest step of a model dir or its checkpoints/ dir."""
    path = paths.path(path, "INITIAL_CHECKPOINT_PATH")
    if (path / "state").is_dir():
        return path
    for directory in (path / "checkpoints", path):
        if directory.is_dir():
            steps = [int(d.name) for d in directory.iterdir() if d.name.isdigit()]
            if steps:
                return directory / str(max(steps))
    raise FileNotFoundError(
        f"INITIAL_CHECKPOINT_PATH {os.fspath(path)!r} holds no flan_jax checkpoint: expected a "
        "step directory containing 'state/', or a model dir with checkpoints/<step>/."
    )


def restore_flan_jax_params(path: str | os.PathLike, abstract_params: Any) -> Any:
    """Parameters alone from a flan_jax checkpoint (`path` as for flan_jax_step_dir), laid
    out as `abstract_params`, for finetuning from them."""
    return _flan_jax_items(path, {"params": abstract_params})["params"]


def _flan_jax_items(path: str | os.PathLike, abstract: dict) -> dict:
    """The items of a flan_jax checkpoint's train state that `abstract` names ("params",
    and to continue a run "step" and "opt_state"), on its abstract arrays' shardings."""
    step_dir = flan_jax_step_dir(path)
    restored = checkpoints.read_state(step_dir, abstract)
    # A partial restore leaves what the checkpoint lacks as the abstract leaf it was asked for.
    missing = [
        jax.tree_util.keystr(key_path)
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(restored["params"])
        if isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    if missing:
        raise ValueError(
            f"checkpoint {step_dir} has no parameters {checkpoints.first_five(missing, ', ')}; "
            "it was written for another model config: check the layer counts and scan_layers "
            "(an HF import for scan_layers=True needs `convert import --scan_layers`)"
        )
    return restored


def _flan_jax_params(checkpoint: str, model, abstract_params: Any) -> Any:
    return restore_flan_jax_params(checkpoint, abstract_params)


def _flan_jax_state(checkpoint: str, model, abstract_state: TrainState, optimizer):
    saved = checkpoints.saved_arrays(flan_jax_step_dir(checkpoint))
    if "opt_state" not in saved:
        return None
    _check_optimizer_state(checkpoint, saved, abstract_state)
    have = _named_leaves(saved["opt_state"])

    def as_saved(path, node):  # a schedule the checkpoint has no count of is not read
        missing = is_schedule_state(node) and f"{_leaf_name(path)}/count" not in have
        return optax.EmptyState() if missing else node

    template = jax.tree_util.tree_map_with_path(
        as_saved, abstract_state.opt_state, is_leaf=is_schedule_state
    )
    items = {"step": abstract_state.step, "params": abstract_state.params}
    restored = _flan_jax_items(checkpoint, {**items, "opt_state": template})
    got = _named_leaves(restored["opt_state"])

    def leaf(path, abstract):  # the count not read starts at 0, as Trainer.continued sets it
        name = _leaf_name(path)
        if name in got:
            return got[name]
        return jax.device_put(np.zeros(abstract.shape, abstract.dtype), abstract.sharding)

    opt_state = jax.tree_util.tree_map_with_path(leaf, abstract_state.opt_state)
    return TrainState(step=restored["step"], params=restored["params"], opt_state=opt_state)


def _leaf_name(path) -> str:
    """A key path as "0/v/encoder/...", alike for a saved metadata tree (dicts, lists) and
    the optimizer's own (tuples, named tuples), where jax.tree_util.keystr differs."""

    def name(entry):
        return str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry))))

    return "/".join(name(e) for e in path)


def _named_leaves(tree: Any) -> dict[str, Any]:
    return {_leaf_name(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_optimizer_state(checkpoint: str, saved: dict, abstract_state: TrainState) -> None:
    """Names the first optimizer-state leaf whose shape (or presence) differs from the
    configured optimizer's. A count that only one of them keeps is no difference: that is
    the learning-rate schedule's (a T5X import has none), which a continued run restarts.
    Another model's parameters are left to the parameter check."""
    if checkpoints.shape_mismatches(saved["params"], abstract_state.params):
        return
    mismatches = checkpoints.shape_mismatches(
        saved["opt_state"], abstract_state.opt_state, _leaf_name
    )
    for leaf, have, want in mismatches:
        if not (leaf.endswith("/count") and None in (have, want)):
            raise ValueError(
                f"the optimizer state of checkpoint {checkpoint} does not fit this run's "
                f"optimizer: opt_state/{leaf} is {_or(have, 'missing')} there, "
                f"{_or(want, 'not kept')} here (another optimizer, momentum, or "
                "factored second moments: min_dim_size_to_factor). Configure the "
                f"checkpoint's optimizer, or set {PARAMS_ONLY} to start from its "
                "parameters with a fresh optimizer state."
            )


def _or(shape: tuple | None, absent: str) -> tuple | str:
    return absent if shape is None else shape


def _hf_params(checkpoint: str, model, abstract_params: Any) -> Any:
    _, params = hf_t5.read_hf_dir(checkpoint, scan_layers=model.config.scan_layers)
    return _placed(checkpoint, params, abstract_params)


def _check_fits(checkpoint: str, params: Any, abstract_params: Any) -> None:
    """Names the parameters whose shapes (or presence) differ between the two trees."""
    problems = [
        f"{leaf} {_or(have, 'missing')} vs the model's {_or(want, 'none')}"
        for leaf, have, want in checkpoints.shape_mismatches(params, abstract_params)
    ]
    if problems:
        raise ValueError(
            f"{checkpoint} does not fit this model: {checkpoints.first_five(problems, '; ')}. "
            "Use the model config of the checkpoint (its size, vocabulary and SCAN_LAYERS) or "
            "another checkpoint."
        )


def _t5x_model(checkpoint: str, model_gin_file: str | None):
    if model_gin_file:
        return model_from_gin_file(model_gin_file)
    return EncoderDecoderModel(t5x.config_from_target(t5x.read_checkpoint(checkpoint).target)), None


def _t5x_params(checkpoint: str, model, abstract_params: Any) -> Any:
    params = t5x.params_from_t5x(t5x.read_checkpoint(checkpoint).target, model.config)
    return _placed(checkpoint, params, abstract_params)


def _t5x_state(checkpoint: str, model, abstract_state: TrainState, optimizer):
    contents = t5x.read_checkpoint(checkpoint)
    params = t5x.params_from_t5x(contents.target, model.config)
    try:
        opt_state = t5x.opt_state_from_t5x(contents, model.config, optimizer, params)
    except ValueError as e:
        raise ValueError(
            f"{e}. Or set {PARAMS_ONLY} to start from the parameters of {checkpoint} with a "
            "fresh optimizer state."
        ) from None
    step = np.asarray(contents.step, np.int32)
    return TrainState(
        step=jax.device_put(step, abstract_state.step.sharding),
        params=_placed(checkpoint, params, abstract_state.params),
        opt_state=_placed(checkpoint, opt_state, abstract_state.opt_state),
    )


def _no_state(checkpoint: str, model, abstract_state: TrainState, optimizer) -> None:
    return None


def _placed(checkpoint: str, params: Any, abstract_params: Any) -> Any:
    """Host `params` checked against the model's shapes, then laid out on its shardings."""
    _check_fits(checkpoint, params, abstract_params)
    return jax.device_put(params, jax.tree.map(lambda x: x.sharding, abstract_params))


class _Reader(NamedTuple):
    model: Callable
    params: Callable
    state: Callable  # the train state, or None where the format keeps parameters alone


_READERS: dict[str, _Reader] = {
    FLAN_JAX: _Reader(_flan_jax_model, _flan_jax_params, _flan_jax_state),
    HF: _Reader(_hf_model, _hf_params, _no_state),
    T5X: _Reader(_t5x_model, _t5x_params, _t5x_state),
}


def _reader(checkpoint: str) -> _Reader:
    return _READERS[checkpoint_format(checkpoint)]
