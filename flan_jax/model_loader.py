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
from typing import Any

import gin
import jax

from flan_jax import checkpoints, cli, partitioning
from flan_jax.interop import hf_t5, t5x
from flan_jax.models.base import EncoderDecoderModel

FLAN_JAX, HF, T5X = "flan_jax", "hf", "t5x"


def checkpoint_format(path: str) -> str:
    """FLAN_JAX, HF or T5X, from the directory's files; FileNotFoundError naming them."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return HF
    if (
        os.path.isfile(os.path.join(path, t5x.MSGPACK_FILE))
        and not os.path.isdir(os.path.join(path, "state"))
    ) or t5x.is_orbax_checkpoint(path):
        return T5X
    for directory in (path, os.path.join(path, "checkpoints")):
        if os.path.isdir(os.path.join(directory, "state")) or (
            os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))
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
    return _reader(checkpoint)[0](checkpoint, model_gin_file)


def restore_params(checkpoint: str, model, abstract_params: Any) -> Any:
    """The checkpoint's parameters laid out as `abstract_params` (shapes with shardings, e.g.
    a trainer's): what a run's INITIAL_CHECKPOINT_PATH starts from."""
    return _reader(checkpoint)[1](checkpoint, model, abstract_params)


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
                "or the model.gin written by `python -m flan_jax.interop.hf_t5 import`"
            ) from None
        try:
            vocabulary_path = gin.query_parameter("%VOCABULARY_PATH")
        except ValueError:
            vocabulary_path = None
        return model.scoped_configurable_fn(), vocabulary_path


def model_gin_for_checkpoint(checkpoint: str) -> str:
    """The gin file describing a flan_jax checkpoint's model: model.gin (written by the HF
    import) or config.gin (written by training) in the checkpoint's model dir."""
    path = os.path.abspath(checkpoint)
    # checkpoint may be the model dir, its checkpoints/ dir or a checkpoints/<step> dir.
    for directory in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        for name in ("model.gin", "config.gin"):
            if os.path.isfile(os.path.join(directory, name)):
                return os.path.join(directory, name)
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
    vocabulary = os.path.join(checkpoint, hf_t5.VOCABULARY_FILE)
    return EncoderDecoderModel(config), vocabulary if os.path.isfile(vocabulary) else None


def _flan_jax_params(checkpoint: str, model, abstract_params: Any) -> Any:
    return checkpoints.restore_params(checkpoint, abstract_params)


def _hf_params(checkpoint: str, model, abstract_params: Any) -> Any:
    _, params = hf_t5.read_hf_dir(checkpoint, scan_layers=model.config.scan_layers)
    return _placed(checkpoint, params, abstract_params)


def _check_fits(checkpoint: str, params: Any, abstract_params: Any) -> None:
    """Names the parameters whose shapes (or presence) differ between the two trees."""
    shapes = lambda tree: {  # noqa: E731
        jax.tree_util.keystr(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    have, want = shapes(params), shapes(abstract_params)
    problems = [
        f"{name} {have.get(name, 'missing')} vs the model's {want.get(name, 'none')}"
        for name in sorted(have.keys() | want.keys())
        if have.get(name) != want.get(name)
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
        raise ValueError(
            f"{checkpoint} does not fit this model: {shown}. Use the model config of the "
            "checkpoint (its size, vocabulary and SCAN_LAYERS) or another checkpoint."
        )


def _t5x_model(checkpoint: str, model_gin_file: str | None):
    if model_gin_file:
        return model_from_gin_file(model_gin_file)
    return EncoderDecoderModel(t5x.config_from_target(t5x.read_checkpoint(checkpoint).target)), None


def _t5x_params(checkpoint: str, model, abstract_params: Any) -> Any:
    params = t5x.params_from_t5x(t5x.read_checkpoint(checkpoint).target, model.config)
    return _placed(checkpoint, params, abstract_params)


def _placed(checkpoint: str, params: Any, abstract_params: Any) -> Any:
    """Host `params` checked against the model's shapes, then laid out on its shardings."""
    _check_fits(checkpoint, params, abstract_params)
    return jax.device_put(params, jax.tree.map(lambda x: x.sharding, abstract_params))


# format -> (model reader, parameter reader)
_READERS: dict[str, tuple[Callable, Callable]] = {
    FLAN_JAX: (_flan_jax_model, _flan_jax_params),
    HF: (_hf_model, _hf_params),
    T5X: (_t5x_model, _t5x_params),
}


def _reader(checkpoint: str) -> tuple[Callable, Callable]:
    return _READERS[checkpoint_format(checkpoint)]
