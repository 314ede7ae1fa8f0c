"""Batch inference over JSONL: predictions and, where targets are given, their scores.

  python -m flan_jax.infer --checkpoint OUT --input in.jsonl --output out.jsonl
  python -m flan_jax.infer --checkpoint flan-t5-base --input in.jsonl --output o.jsonl --num_beams 4

Each input line is {"inputs": str, "targets": str (optional), ...}; each output line is the
same object plus "prediction" (a list of num_decodes strings when num_decodes > 1) and, when
"targets" is given, "score": the summed log-likelihood of the targets (EOS included).
Inputs and targets are tokenized as seqio tasks do (pieces + EOS, trimmed to the length) and
made into the model's features by the feature converter it trains with, so T5 and decoder-only
(PaLM-style) checkpoints both work. On several hosts (--coordinator_address, --num_processes,
--process_id) every host reads the input and places its own rows; process 0 writes the output.
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

from flan_jax import cli, data, model_loader, partitioning, paths, predict
from flan_jax.models.base import EOS_ID


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Examples from a JSONL file; a malformed line raises ValueError naming path:line."""
    examples = []
    with paths.path(path, "--input").open(encoding="utf-8") as f:
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


def _tokens(vocabulary, text: str | None, length: int) -> tuple[list[int], bool]:
    """Pieces + EOS, trimmed to `length` as seqio's append_eos_after_trim does, and whether
    anything was trimmed. No text (an example without targets: decoded, not scored) is no
    tokens."""
    if text is None:
        return [], False
    ids = list(vocabulary.encode(text))
    return ids[: length - 1] + [EOS_ID], len(ids) + 1 > length


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

    The model's own feature converter turns the tokens into its features (any family); every
    host builds the same global batches and places the rows its devices hold, as training
    does. Every batch is padded to batch_size rows and fixed lengths, so each function
    compiles once.
    """
    lengths = {"inputs": max_input_length, "targets": settings.max_decode_length}
    model.check_feature_lengths(lengths, "--max_input_length / --max_decode_length")
    partitioner.check_batch_size(batch_size)
    params_shardings = jax.tree.map(lambda x: x.sharding, params)
    predict_fn = predict.predict_function(model, partitioner, params_shardings, settings)
    score = partitioner.partition(
        model.score_batch,
        in_shardings=(params_shardings, partitioner.batch_sharding()),
        out_shardings=partitioner.replicated_sharding(),
    )
    tokenized, trimmed = [], 0
    for example in examples:
        row = {}
        for feature, length in lengths.items():
            row[feature], cut = _tokens(vocabulary, example.get(feature), length)
            trimmed += cut
        tokenized.append(row)
    scoring = any("targets" in e for e in examples)
    batches = data.global_batches(
        data.model_batches(model, tokenized, lengths, batch_size), partitioner
    )
    results = []
    for start, batch in zip(range(0, len(examples), batch_size), batches):
        predictions = np.asarray(predict_fn(params, batch, np.int32(start)))
        scores = np.asarray(score(params, batch)) if scoring else None
        for row, example in enumerate(examples[start : start + batch_size]):
            result = dict(example)
            if settings.num_decodes > 1:
                result["prediction"] = [vocabulary.decode(p) for p in predictions[row].tolist()]
            else:
                result["prediction"] = vocabulary.decode(predictions[row].tolist())
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
    if jax.process_index() == 0:  # every process holds the same results
        output = paths.path(args.output, "--output")
        output.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results), encoding="utf-8"
        )
        print(f"wrote {len(results)} predictions to {output}")


if __name__ == "__main__":
    main()
