"""Hugging Face T5 / Flan-T5 config and weights <-> flan_jax T5Config and params.

Pure numpy and safetensors: no torch or transformers needed, so it works on a TPU VM
that only has the safetensors files. HF stores Linear weights as [out, in]; flan_jax
kernels are [in, out] with the head dimension split out, hence the transposes and reshapes.
Directories are local or gs:// (`flan_jax.paths`); safetensors files on gs:// are read whole
into memory (local ones are memory-mapped). The command that imports and exports checkpoints
is flan_jax.convert.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath

from flan_jax import paths
from flan_jax.models.t5 import T5Config, scan_params, unscan_params

VOCABULARY_FILE = "spiece.model"

# Each HF checkpoint holds the shared embedding under one or more of these names.
_EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _refuse(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"HF config {field}={value!r} is not supported: {why}")


def t5_config_from_hf(config_dict: Mapping[str, Any]) -> T5Config:
    """T5Config for an HF T5 v1.1 / Flan-T5 / mT5 config.json dict.

    Refuses (ValueError naming the field) what this T5 cannot represent: a non-gated
    or non-GELU MLP, output logits rescaled by d_model**-0.5 through a tied embedding
    (original T5 v1.0), or special token ids other than pad = decoder start = 0, eos = 1.
    transformers >= 5 writes tie_word_embeddings=true for every T5 and records the
    scaling in scale_decoder_outputs; when that field is present it is the one checked.
    """
    model_type = config_dict.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
        raise _refuse("model_type", model_type, "only T5 v1.1-style 't5' and 'mt5' models")
    feed_forward_proj = config_dict.get("feed_forward_proj", "relu")
    if feed_forward_proj != "gated-gelu":
        raise _refuse(
            "feed_forward_proj",
            feed_forward_proj,
            "flan_jax implements only 'gated-gelu' (T5 v1.1)",
        )
    if not config_dict.get("is_gated_act", True):
        raise _refuse("is_gated_act", config_dict["is_gated_act"], "the MLP must be gated")
    dense_act_fn = config_dict.get("dense_act_fn", "gelu_new")
    if dense_act_fn not in ("gelu_new", "gelu_pytorch_tanh"):
        raise _refuse("dense_act_fn", dense_act_fn, "the MLP gate is the tanh-approximate GELU")
    if "scale_decoder_outputs" in config_dict:
        if config_dict["scale_decoder_outputs"]:
            raise _refuse(
                "scale_decoder_outputs",
                True,
                "T5 v1.1 does not rescale decoder outputs by d_model**-0.5 (that is T5 v1.0)",
            )
    elif config_dict.get("tie_word_embeddings", True):
        raise _refuse(
            "tie_word_embeddings",
            config_dict.get("tie_word_embeddings", True),
            "T5 v1.1 / Flan-T5 have an untied output layer; tied T5 v1.0 also rescales "
            "logits by d_model**-0.5, which flan_jax does not implement",
        )
    special_ids = (("pad_token_id", 0), ("decoder_start_token_id", 0), ("eos_token_id", 1))
    for field, expected in special_ids:
        value = config_dict.get(field, expected)
        if value != expected and value != [expected]:
            raise _refuse(field, value, f"flan_jax hard-codes {field} = {expected}")
    if not config_dict.get("is_encoder_decoder", True):
        raise _refuse("is_encoder_decoder", False, "this is an encoder-decoder model")

    num_layers = config_dict["num_layers"]
    num_decoder_layers = config_dict.get("num_decoder_layers")
    return T5Config(
        vocab_size=config_dict["vocab_size"],
        d_model=config_dict["d_model"],
        num_heads=config_dict["num_heads"],
        d_kv=config_dict["d_kv"],
        d_ff=config_dict["d_ff"],
        num_encoder_layers=num_layers,
        num_decoder_layers=num_layers if num_decoder_layers is None else num_decoder_layers,
        relative_attention_num_buckets=config_dict.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=config_dict.get("relative_attention_max_distance", 128),
        dropout_rate=float(config_dict.get("dropout_rate", 0.1)),
        layer_norm_epsilon=float(config_dict.get("layer_norm_epsilon", 1e-6)),
    )


class _Reader:
    """Pops tensors from the state dict, checking shapes, so leftovers can be reported."""

    def __init__(self, state_dict: Mapping[str, np.ndarray], dtype: np.dtype):
        self.remaining = dict(state_dict)
        self.dtype = dtype

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.remaining:
            raise ValueError(
                f"HF state dict has no {key!r}; is the config right for this checkpoint?"
            )
        value = np.asarray(self.remaining.pop(key))
        if value.shape != shape:
            raise ValueError(
                f"HF tensor {key!r} has shape {value.shape}, the config implies {shape}; "
                "check the config matches the checkpoint"
            )
        return value.astype(self.dtype)


def _attention(read: _Reader, prefix: str, c: T5Config) -> dict:
    inner = c.num_heads * c.d_kv

    def projection(name):
        weight = read.take(f"{prefix}.{name}.weight", (inner, c.d_model))
        return {"kernel": weight.T.reshape(c.d_model, c.num_heads, c.d_kv)}

    out = read.take(f"{prefix}.o.weight", (c.d_model, inner))
    return {
        "query": projection("q"),
        "key": projection("k"),
        "value": projection("v"),
        "out": {"kernel": out.T.reshape(c.num_heads, c.d_kv, c.d_model)},
    }


def _mlp(read: _Reader, prefix: str, c: T5Config) -> dict:
    return {
        "wi_0": {"kernel": read.take(f"{prefix}.wi_0.weight", (c.d_ff, c.d_model)).T},
        "wi_1": {"kernel": read.take(f"{prefix}.wi_1.weight", (c.d_ff, c.d_model)).T},
        "wo": {"kernel": read.take(f"{prefix}.wo.weight", (c.d_model, c.d_ff)).T},
    }


def _norm(read: _Reader, key: str, c: T5Config) -> dict:
    return {"scale": read.take(key, (c.d_model,))}


def _relpos(read: _Reader, stack: str, c: T5Config) -> dict:
    key = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    table = read.take(key, (c.relative_attention_num_buckets, c.num_heads))
    return {"rel_embedding": table.T}


def params_from_hf(state_dict: Mapping[str, np.ndarray], config: T5Config) -> dict:
    """Unboxed flan_jax "params" tree from an HF T5ForConditionalGeneration state dict.

    Every tensor must be used: leftovers (say, from more layers than the config has)
    raise a ValueError listing them. A checkpoint without lm_head.weight is a tied one;
    its embedding is copied into the output layer (transformers >= 5 does not rescale).
    """
    c = config
    read = _Reader(state_dict, jnp.dtype(c.param_dtype))
    embedding_key = next((k for k in _EMBEDDING_KEYS if k in read.remaining), None)
    if embedding_key is None:
        raise ValueError(f"HF state dict has none of the embedding tensors {_EMBEDDING_KEYS}")
    embedding = read.take(embedding_key, (c.vocab_size, c.d_model))
    for key in _EMBEDDING_KEYS:  # the same tensor under its other names
        read.remaining.pop(key, None)
    if "lm_head.weight" in read.remaining:
        logits_kernel = read.take("lm_head.weight", (c.vocab_size, c.d_model)).T
    else:
        logits_kernel = embedding.T.copy()

    encoder = {"relpos_bias": _relpos(read, "encoder", c)}
    for i in range(c.num_encoder_layers):
        block = f"encoder.block.{i}.layer"
        encoder[f"layers_{i}"] = {
            "pre_attention_layer_norm": _norm(read, f"{block}.0.layer_norm.weight", c),
            "attention": _attention(read, f"{block}.0.SelfAttention", c),
            "pre_mlp_layer_norm": _norm(read, f"{block}.1.layer_norm.weight", c),
            "mlp": _mlp(read, f"{block}.1.DenseReluDense", c),
        }
    encoder["encoder_norm"] = _norm(read, "encoder.final_layer_norm.weight", c)

    decoder = {"relpos_bias": _relpos(read, "decoder", c)}
    for i in range(c.num_decoder_layers):
        block = f"decoder.block.{i}.layer"
        decoder[f"layers_{i}"] = {
            "pre_self_attention_layer_norm": _norm(read, f"{block}.0.layer_norm.weight", c),
            "self_attention": _attention(read, f"{block}.0.SelfAttention", c),
            "pre_cross_attention_layer_norm": _norm(read, f"{block}.1.layer_norm.weight", c),
            "encoder_decoder_attention": _attention(read, f"{block}.1.EncDecAttention", c),
            "pre_mlp_layer_norm": _norm(read, f"{block}.2.layer_norm.weight", c),
            "mlp": _mlp(read, f"{block}.2.DenseReluDense", c),
        }
    decoder["decoder_norm"] = _norm(read, "decoder.final_layer_norm.weight", c)
    decoder["logits_dense"] = {"kernel": logits_kernel}

    if read.remaining:
        raise ValueError(
            f"HF state dict tensors not used by this config: {sorted(read.remaining)}; "
            "check num_layers / num_decoder_layers match the checkpoint"
        )
    params = {"token_embedder": {"embedding": embedding}, "encoder": encoder, "decoder": decoder}
    return scan_params(params, c) if c.scan_layers else params


def hf_config_from_t5(config: T5Config) -> dict:
    """The config.json of an HF T5ForConditionalGeneration equivalent to `config`."""
    c = config
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": c.vocab_size,
        "d_model": c.d_model,
        "d_kv": c.d_kv,
        "d_ff": c.d_ff,
        "num_heads": c.num_heads,
        "num_layers": c.num_encoder_layers,
        "num_decoder_layers": c.num_decoder_layers,
        "relative_attention_num_buckets": c.relative_attention_num_buckets,
        "relative_attention_max_distance": c.relative_attention_max_distance,
        "dropout_rate": c.dropout_rate,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "feed_forward_proj": "gated-gelu",
        "dense_act_fn": "gelu_new",
        "is_gated_act": True,
        "tie_word_embeddings": False,
        "scale_decoder_outputs": False,
        "is_encoder_decoder": True,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
        "use_cache": True,
    }


def params_to_hf(params: Mapping[str, Any], config: T5Config) -> dict[str, np.ndarray]:
    """The inverse of params_from_hf: an HF T5ForConditionalGeneration state dict."""
    c = config
    if c.scan_layers:
        params = unscan_params(params, c)
    p = jax.tree.map(np.asarray, params)
    inner = c.num_heads * c.d_kv
    out = {}

    def put(key, value):
        out[key] = np.ascontiguousarray(value)

    def attention(prefix, a):
        for hf_name, name in (("q", "query"), ("k", "key"), ("v", "value")):
            put(f"{prefix}.{hf_name}.weight", a[name]["kernel"].reshape(c.d_model, inner).T)
        put(f"{prefix}.o.weight", a["out"]["kernel"].reshape(inner, c.d_model).T)

    def mlp(prefix, m):
        for name in ("wi_0", "wi_1", "wo"):
            put(f"{prefix}.{name}.weight", m[name]["kernel"].T)

    put("shared.weight", p["token_embedder"]["embedding"])
    encoder, decoder = p["encoder"], p["decoder"]
    for stack, tree in (("encoder", encoder), ("decoder", decoder)):
        put(
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            tree["relpos_bias"]["rel_embedding"].T,
        )
    for i in range(c.num_encoder_layers):
        block, layer = f"encoder.block.{i}.layer", encoder[f"layers_{i}"]
        put(f"{block}.0.layer_norm.weight", layer["pre_attention_layer_norm"]["scale"])
        attention(f"{block}.0.SelfAttention", layer["attention"])
        put(f"{block}.1.layer_norm.weight", layer["pre_mlp_layer_norm"]["scale"])
        mlp(f"{block}.1.DenseReluDense", layer["mlp"])
    put("encoder.final_layer_norm.weight", encoder["encoder_norm"]["scale"])
    for i in range(c.num_decoder_layers):
        block, layer = f"decoder.block.{i}.layer", decoder[f"layers_{i}"]
        put(f"{block}.0.layer_norm.weight", layer["pre_self_attention_layer_norm"]["scale"])
        attention(f"{block}.0.SelfAttention", layer["self_attention"])
        put(f"{block}.1.layer_norm.weight", layer["pre_cross_attention_layer_norm"]["scale"])
        attention(f"{block}.1.EncDecAttention", layer["encoder_decoder_attention"])
        put(f"{block}.2.layer_norm.weight", layer["pre_mlp_layer_norm"]["scale"])
        mlp(f"{block}.2.DenseReluDense", layer["mlp"])
    put("decoder.final_layer_norm.weight", decoder["decoder_norm"]["scale"])
    put("lm_head.weight", decoder["logits_dense"]["kernel"].T)
    return out


def read_hf_config(hf_dir: str | os.PathLike, *, scan_layers: bool = False) -> T5Config:
    """The T5Config of an HF directory's config.json; raises naming what is missing or refused."""
    config_path = paths.path(hf_dir, "Hugging Face directory") / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{config_path} not found: pass a Hugging Face T5 directory "
            "(config.json, model.safetensors, spiece.model), e.g. from save_pretrained"
        )
    config = t5_config_from_hf(json.loads(config_path.read_text()))
    return dataclasses.replace(config, scan_layers=scan_layers)


def read_hf_dir(hf_dir: str | os.PathLike, *, scan_layers: bool = False) -> tuple[T5Config, dict]:
    """(T5Config, flan_jax params) from an HF directory: config.json plus model.safetensors
    or a sharded model.safetensors.index.json. Raises naming what is missing or refused."""
    config = read_hf_config(hf_dir, scan_layers=scan_layers)
    return config, params_from_hf(_read_safetensors(hf_dir), config)


def _read_safetensors(hf_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    directory = paths.path(hf_dir, "Hugging Face directory")
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return _load_safetensors(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_load_safetensors(directory / shard))
        return state
    raise FileNotFoundError(
        f"{hf_dir} has neither model.safetensors nor model.safetensors.index.json; "
        "only safetensors weights are read (convert pytorch_model.bin with "
        "transformers' save_pretrained(safe_serialization=True))"
    )


def _load_safetensors(path: epath.Path) -> dict[str, np.ndarray]:
    if paths.is_local(path):
        return safetensors.numpy.load_file(os.fspath(path))
    return safetensors.numpy.load(path.read_bytes())
