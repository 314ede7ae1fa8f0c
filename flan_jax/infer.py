"""Batch inference over JSONL: predictions and, where targets are given, their scores.

  python -m flan_jax.infer --checkpoint OUT --input in.jsonl --output out.jsonl
  python -m flan_jax.infer --checkpoint flan-t5-base --input in.jsonl --output o.jsonl --num_beams 4

Each input line is {"inputs": str, "targets": str (optional), ...}; each output line is the
same object plus "prediction" (a list of num_decodes strings when num_decodes > 1) and, when
"targets" is given, "score": the summed log-likelihood of the targets (EOS included).
Inputs are tokenized as seqio tasks do for Flan-T5 (pieces + EOS, trimmed to the length).
"""

from __future__ import annotations

from flan_jax import allocator

if __name__ == "__main__":  # before numpy, TF or jax start threads that keep their own arenas
    allocator.configure()

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import json
import sys
from collections.abc import Sequence

import jax
import numpy as np

from flan_jax import cli, data, model_loader, partitioning, predict
from flan_jax.models.base import EOS_ID


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
    settings: predict.DecodeSettings,
) -> list[dict]:
    """The examples with "prediction" and, where they have "targets", "score" added.

    Every batch is padded to batch_size rows and fixed lengths, so each function compiles once.
    """
    partitioner.check_batch_size(batch_size)
    params_shardings = jax.tree.map(lambda x: x.sharding, params)
    predict_fn = predict.predict_function(model, partitioner, params_shardings, settings)
    score = partitioner.partition(
        model.score_batch,
        in_shardings=(params_shardings, partitioner.batch_sharding()),
        out_shardings=None,
    )
    results, trimmed = [], 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        inputs, n = _tokens(vocabulary, [e["inputs"] for e in chunk], max_input_length)
        trimmed += n
        batch = {"encoder_input_tokens": inputs}
        if any("targets" in e for e in chunk):
            targets, n = _tokens(
                vocabulary, [e.get("targets", "") for e in chunk], settings.max_decode_length
            )
            trimmed += n
            batch["decoder_input_tokens"] = np.pad(targets, ((0, 0), (1, 0)))[:, :-1]
            batch["decoder_target_tokens"] = targets
        batch = data.pad_rows(batch, batch_size)
        prompts = {"encoder_input_tokens": batch["encoder_input_tokens"]}
        predictions = np.asarray(predict_fn(params, prompts, np.int32(start)))
        scores = np.asarray(score(params, batch)) if len(batch) > 1 else None
        for row, example in enumerate(chunk):
            result = dict(example)
            if settings.num_decodes > 1:
                result["prediction"] = [vocabulary.decode(p) for p in predictions[row]]
            else:
                result["prediction"] = vocabulary.decode(predictions[row])
            if "targets" in example:
                result["score"] = float(scores[row])
            results.append(result)
    if trimmed:
        print(
            f"warning: {trimmed} inputs/targets were longer than max_input_length="
            f"{max_input_length} / max_decode_length={settings.max_decode_length} tokens and "
            "were trimmed",
            file=sys.stderr,
        )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = cli.new_parser(__doc__, distributed=True)
    cli.add_checkpoint_flags(parser)
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
    parser.add_argument("--num_decodes", type=int, default=1, help="outputs per input")
    parser.add_argument(
        "--num_beams", type=int, help="beam search with this many beams (instead of sampling)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model_parallel_size", type=int, default=1)
    args = cli.parse_args(parser, argv)

    try:
        examples = read_jsonl(args.input)
    except ValueError as e:
        parser.error(str(e))
    partitioner = partitioning.Partitioner(
        partitioning.create_mesh(args.model_parallel_size), partitioning.logical_axis_rules()
    )
    loaded = model_loader.load(
        args.checkpoint,
        partitioner,
        model_gin_file=args.model_gin_file,
        vocabulary_path=args.vocabulary,
    )
    fields = dataclasses.fields(predict.DecodeSettings)
    settings = predict.DecodeSettings(**{f.name: getattr(args, f.name) for f in fields})
    results = infer(
        examples,
        loaded.model,
        loaded.params,
        loaded.vocabulary(),
        partitioner,
        batch_size=args.batch_size,
        max_input_length=args.max_input_length,
        settings=settings,
    )
    with open(args.output, "w", encoding="utf-8") as f:
        for result in results:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")
    print(f"wrote {len(results)} predictions to {args.output}")


if __name__ == "__main__":
    main()
