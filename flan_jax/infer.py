"""Batch inference over JSONL: predictions and, where targets are given, their scores.

  python -m flan_jax.infer --checkpoint OUT --input in.jsonl --output out.jsonl
  python -m flan_jax.infer --hf_dir google_flan_t5_base --input in.jsonl --output out.jsonl

Each input line is {"inputs": str, "targets": str (optional), ...}; each output line is the
same object plus "prediction" (a list of num_decodes strings when num_decodes > 1) and, when
"targets" is given, "score": the summed log-likelihood of the targets (EOS included).
Inputs are tokenized as seqio tasks do for Flan-T5 (pieces + EOS, trimmed to the length).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import json
import sys
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
import seqio

from flan_jax import checkpoints, gin_utils, partitioning
from flan_jax.interop import hf_t5
from flan_jax.models.base import EOS_ID, EncoderDecoderModel


def read_jsonl(path: str) -> list[dict]:
    """Examples from a JSONL file; a malformed line raises ValueError naming path:line."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            if not isinstance(example, dict) or not isinstance(example.get("inputs"), str):
                raise ValueError(
                    f'{path}:{number}: each line must be a JSON object with a string "inputs" '
                    f'(and optionally a string "targets"), got {line.strip()[:80]!r}'
                )
            if not isinstance(example.get("targets", ""), str):
                raise ValueError(f'{path}:{number}: "targets" must be a string')
            examples.append(example)
    return examples


def load_model(
    *,
    checkpoint: str | None,
    hf_dir: str | None,
    gin_file: str | None,
    vocabulary: str | None,
    partitioner: partitioning.Partitioner,
):
    """(model, params placed on the mesh, vocabulary) from a flan_jax checkpoint or an HF dir."""
    if (checkpoint is None) == (hf_dir is None):
        raise ValueError("pass exactly one of --checkpoint (flan_jax) or --hf_dir (Hugging Face)")
    if hf_dir is not None:
        config, params = hf_t5.read_hf_dir(hf_dir)
        model = EncoderDecoderModel(config)
        vocabulary = vocabulary or os.path.join(hf_dir, hf_t5.VOCABULARY_FILE)
    else:
        model, vocabulary_path = gin_utils.load_model(
            gin_file or gin_utils.model_gin_for_checkpoint(checkpoint)
        )
        vocabulary = vocabulary or vocabulary_path
    boxed = jax.eval_shape(model.init, jax.random.key(0))
    shardings = partitioner.shardings(nn.get_partition_spec(boxed))
    if hf_dir is not None:
        params = jax.device_put(params, shardings)
    else:
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            nn.unbox(boxed),
            shardings,
        )
        params = checkpoints.restore_params(checkpoint, abstract)
    if not vocabulary or not os.path.isfile(vocabulary):
        raise FileNotFoundError(
            f"SentencePiece vocabulary {vocabulary!r} not found; "
            "pass --vocabulary PATH/spiece.model"
        )
    return model, params, seqio.SentencePieceVocabulary(vocabulary)


def _tokens(vocabulary, texts: Sequence[str], length: int) -> tuple[np.ndarray, int]:
    """[len(texts), length] int32 rows of pieces + EOS, and how many were trimmed."""
    rows = np.zeros((len(texts), length), np.int32)
    trimmed = 0
    for row, text in enumerate(texts):
        ids = list(vocabulary.encode(text))
        trimmed += len(ids) + 1 > length
        ids = ids[: length - 1] + [EOS_ID]
        rows[row, : len(ids)] = ids
    return rows, trimmed


def infer(
    examples: list[dict],
    model,
    params,
    vocabulary,
    partitioner: partitioning.Partitioner,
    *,
    batch_size: int,
    max_input_length: int,
    max_decode_length: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_decodes: int = 1,
    seed: int = 0,
) -> list[dict]:
    """The examples with "prediction" and, where they have "targets", "score" added.

    Every batch is padded to batch_size rows and fixed lengths, so each function compiles once.
    """
    partitioner.check_batch_size(batch_size)
    params_shardings = jax.tree.map(lambda x: x.sharding, params)
    batch_sharding = partitioner.batch_sharding()
    predict = partitioner.partition(
        lambda p, batch, rng: model.predict_batch(
            p,
            batch,
            rng=rng,
            max_decode_length=max_decode_length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_decodes=num_decodes,
        ),
        in_shardings=(params_shardings, batch_sharding, None),
        out_shardings=None,
    )
    score = partitioner.partition(
        model.score_batch, in_shardings=(params_shardings, batch_sharding), out_shardings=None
    )
    rng = jax.random.key(seed)
    results, trimmed = [], 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        padded = chunk + [{"inputs": ""}] * (batch_size - len(chunk))
        inputs, n = _tokens(vocabulary, [e["inputs"] for e in padded], max_input_length)
        trimmed += n
        batch_rng = jax.random.fold_in(rng, start)
        predictions = np.asarray(predict(params, {"encoder_input_tokens": inputs}, batch_rng))
        scores = None
        if any("targets" in e for e in chunk):
            targets, n = _tokens(
                vocabulary, [e.get("targets", "") for e in padded], max_decode_length
            )
            trimmed += n
            score_batch = {
                "encoder_input_tokens": inputs,
                "decoder_input_tokens": np.pad(targets, ((0, 0), (1, 0)))[:, :-1],
                "decoder_target_tokens": targets,
            }
            scores = np.asarray(score(params, score_batch))
        for row, example in enumerate(chunk):
            result = dict(example)
            if num_decodes > 1:
                result["prediction"] = [vocabulary.decode(p) for p in predictions[row]]
            else:
                result["prediction"] = vocabulary.decode(predictions[row])
            if "targets" in example:
                result["score"] = float(scores[row])
            results.append(result)
    if trimmed:
        print(
            f"warning: {trimmed} inputs/targets were longer than max_input_length="
            f"{max_input_length} / max_decode_length={max_decode_length} tokens and were trimmed",
            file=sys.stderr,
        )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="flan_jax model dir or checkpoints/<step> dir")
    source.add_argument("--hf_dir", help="HF T5 dir (config.json, safetensors, spiece.model)")
    parser.add_argument(
        "--gin_file", help="model gin file (default: model.gin or config.gin next to --checkpoint)"
    )
    parser.add_argument(
        "--vocabulary", help="spiece.model (default: the gin VOCABULARY_PATH or the HF dir's)"
    )
    parser.add_argument("--input", required=True, help="JSONL: 'inputs' (and optional 'targets')")
    parser.add_argument("--output", required=True, help="JSONL written with 'prediction', 'score'")
    parser.add_argument("--batch_size", type=int, default=32, help="multiple of data-parallel size")
    parser.add_argument("--max_input_length", type=int, default=512)
    parser.add_argument(
        "--max_decode_length", type=int, default=128, help="also the targets' length for scoring"
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--num_decodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model_parallel_size", type=int, default=1)
    args = parser.parse_args(argv)

    try:
        examples = read_jsonl(args.input)
    except ValueError as e:
        parser.error(str(e))
    partitioner = partitioning.Partitioner(
        partitioning.create_mesh(args.model_parallel_size), partitioning.logical_axis_rules()
    )
    model, params, vocabulary = load_model(
        checkpoint=args.checkpoint,
        hf_dir=args.hf_dir,
        gin_file=args.gin_file,
        vocabulary=args.vocabulary,
        partitioner=partitioner,
    )
    results = infer(
        examples,
        model,
        params,
        vocabulary,
        partitioner,
        batch_size=args.batch_size,
        max_input_length=args.max_input_length,
        max_decode_length=args.max_decode_length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_decodes=args.num_decodes,
        seed=args.seed,
    )
    with open(args.output, "w", encoding="utf-8") as f:
        for result in results:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
    print(f"wrote {len(results)} predictions to {args.output}")


if __name__ == "__main__":
    main()
