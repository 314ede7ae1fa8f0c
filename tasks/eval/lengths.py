r"""How many tokens the suites' reference answers and prompts take: the measurement behind the
decode lengths of gin/eval/evaluate.gin and palm.gin (a chain of thought cut at the decode
length has no "So the answer is" and scores as wrong).

  python -m tasks.eval.lengths --vocabulary=spiece.model --bbh_dir=BIG-Bench-Hard \
    --mmlu_dir=mmlu --mgsm_dir=mgsm [--tydiqa_dir=tydiqa] [--json=lengths.json]

Each benchmark is measured from whichever of its files are there (the layouts of
`tasks.eval.{bbh,mmlu,mgsm,tydiqa}`); the reference answers are what a model is asked to
write after the prompt, counted with the EOS that ends them:

- bbh_cot: each cot-prompts exemplar's reasoning after "A: Let's think step by step.", and
  where the directory has BBH's own code-davinci-002-outputs/code-davinci-002-cot, its
  reference chains on the test questions that reached "So the answer is" (the others were
  cut by the generator's own limit, so their length says nothing of an answer's);
- mmlu_cot: each mmlu-cot.json exemplar's reasoning after the same trigger;
- mgsm: each exemplar's step-by-step answer after its header;
- bbh_direct, tydiqa: the gold answers.

Prompts (the rendered inputs, with EOS) are measured for the suites whose full test data is
there, to show what fits beside the answers in a decoder's context.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping

import numpy as np
import seqio
from etils import epath

from tasks import metrics, vocab
from tasks.eval import bbh, mgsm, mmlu, readers, tydiqa
from tasks.templates import COT_TRIGGER

# BBH's reference chains of thought, written by code-davinci-002 (the BBH paper's outputs).
BBH_REFERENCE_OUTPUTS = os.path.join("code-davinci-002-outputs", "code-davinci-002-cot")
_EXEMPLAR = "\n\nQ: "


def stats(lengths: Iterable[int]) -> dict[str, int]:
    """count, max and 99th percentile (rounded up) of token lengths."""
    values = np.asarray(list(lengths))
    if not values.size:
        raise ValueError("no texts to measure")
    p99 = math.ceil(float(np.percentile(values, 99)))
    return {"count": int(values.size), "max": int(values.max()), "p99": p99}


def token_lengths(texts: Iterable[str], vocabulary: seqio.Vocabulary) -> list[int]:
    """Tokens of each text plus the EOS a target or an input ends with."""
    return [len(vocabulary.encode(text)) + 1 for text in texts]


def _is_file(path: str) -> bool:
    return epath.Path(path).is_file()  # local or gs://


def cot_reasonings(prompt: str) -> list[str]:
    """The reasoning of each "Q: ...\\nA: Let's think step by step. ..." exemplar of a CoT
    prompt: what a model writes after a query that ends with the trigger."""
    reasonings = []
    for exemplar in f"\n\n{prompt.strip()}".split(_EXEMPLAR)[1:]:
        _, found, answer = exemplar.partition(f"\nA: {COT_TRIGGER}")
        if not found:
            raise ValueError(f"exemplar {exemplar[:60]!r} has no 'A: {COT_TRIGGER}' answer")
        reasonings.append(answer.strip())
    return reasonings


def _bbh(directory: str) -> dict[str, dict[str, list[str]]]:
    """{suite/source: {task: texts}} of what BBH's directory holds."""
    found: dict[str, dict[str, list[str]]] = {}
    for task in bbh.TASKS:
        prompt_path = os.path.join(directory, "cot-prompts", f"{task}.txt")
        if _is_file(prompt_path):
            cot, _ = bbh.read_prompts(prompt_path)
            found.setdefault("bbh_cot/exemplars", {})[task] = cot_reasonings(cot)
        examples_path = os.path.join(directory, "bbh", f"{task}.json")
        if _is_file(examples_path):
            targets = [e["target"] for e in bbh.read_examples(examples_path)]
            found.setdefault("bbh_direct/answers", {})[task] = targets
        if _is_file(prompt_path) and _is_file(examples_path):
            for mode, cot_mode in (("direct", False), ("cot", True)):
                inputs = [e["inputs"] for e in bbh.examples(task, cot_mode, directory)]
                found.setdefault(f"bbh_{mode}/prompts", {})[task] = inputs
        reference = epath.Path(directory) / BBH_REFERENCE_OUTPUTS
        paths = reference.glob(f"{task}_few_shot_*.json") if reference.is_dir() else []
        for path in map(os.fspath, paths):
            outputs = readers.field(readers.read_json(path), "outputs", list, path)
            texts = [readers.field(o, "prediction", str, path) for o in outputs]
            complete = [text for text in texts if metrics.COT_ANSWER_PREFIX in text]
            found.setdefault("bbh_cot/code-davinci-002", {})[task] = complete
    return found


def _mmlu(directory: str) -> dict[str, dict[str, list[str]]]:
    path = os.path.join(directory, mmlu.COT_PROMPTS_FILE)
    if not _is_file(path):
        return {}
    prompts = readers.read_json(path, "MMLU chain-of-thought prompts")
    return {
        "mmlu_cot/exemplars": {
            subject: cot_reasonings(readers.field(prompts, subject, str, path))
            for subject in mmlu.SUBJECTS
            if subject in prompts
        }
    }


def _mgsm(directory: str) -> dict[str, dict[str, list[str]]]:
    path = os.path.join(directory, mgsm.EXEMPLARS_FILE)
    if not _is_file(path):
        return {}
    answers = {}
    for language, shots in mgsm.read_exemplars(path).items():
        if language in mgsm.LANGUAGES:
            answers[language] = [
                shot["a"][len(mgsm.header(shot["a"], path)) :] for shot in shots[: mgsm.NUM_SHOTS]
            ]
    found = {"mgsm/exemplars": answers}
    languages = [
        language
        for language in answers
        if _is_file(os.path.join(directory, f"mgsm_{language}.tsv"))
    ]
    if languages:
        found["mgsm/prompts"] = {
            language: [e["inputs"] for e in mgsm.examples(language, directory)]
            for language in languages
        }
    return found


def _tydiqa(directory: str) -> dict[str, dict[str, list[str]]]:
    paths = [os.path.join(directory, name) for name in tydiqa.SPLIT_FILES.values()]
    if not all(_is_file(path) for path in paths):
        return {}
    present = set(tydiqa.read_questions(paths[0])) & set(tydiqa.read_questions(paths[1]))
    examples = {
        language: tydiqa.examples(language, directory)
        for language in tydiqa.LANGUAGES
        if language in present
    }
    return {
        "tydiqa/answers": {
            language: [answer for e in rows for answer in e[tydiqa.ANSWERS]]
            for language, rows in examples.items()
        },
        "tydiqa/prompts": {
            language: [e["inputs"] for e in rows] for language, rows in examples.items()
        },
    }


READERS = {"bbh": _bbh, "mmlu": _mmlu, "mgsm": _mgsm, "tydiqa": _tydiqa}


def measure(
    directories: Mapping[str, str], vocabulary: seqio.Vocabulary
) -> dict[str, dict[str, dict[str, int]]]:
    """{"suite/source": {task: stats, "all": stats}} for the benchmarks in `directories`
    ({"bbh": path, ...}), in `vocabulary`'s tokens."""
    unknown = sorted(set(directories) - set(READERS))
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; measured are {', '.join(READERS)}")
    measured = {}
    for benchmark, directory in directories.items():
        for source, by_task in READERS[benchmark](directory).items():
            lengths = {task: token_lengths(texts, vocabulary) for task, texts in by_task.items()}
            measured[source] = {task: stats(values) for task, values in lengths.items()}
            measured[source]["all"] = stats(v for values in lengths.values() for v in values)
    return measured


def pieces_fingerprint(vocabulary: seqio.SentencePieceVocabulary) -> str:
    """sha256 of the model's own pieces in id order (not the extra ids seqio appends): the
    same for every copy of a SentencePiece model that tokenizes alike, whatever else its file
    holds."""
    processor = vocabulary.tokenizer
    size = processor.get_piece_size() - vocabulary.extra_ids
    pieces = "\n".join(processor.id_to_piece(i) for i in range(size))
    return hashlib.sha256(pieces.encode("utf-8")).hexdigest()


def format_table(measured: Mapping[str, Mapping[str, Mapping[str, int]]]) -> str:
    """One line per suite/source and task: count, p99, max."""
    lines = [f"{'suite/source':<28} {'task':<42} {'count':>6} {'p99':>5} {'max':>5}"]
    for source, by_task in measured.items():
        for task, s in sorted(by_task.items(), key=lambda item: item[0] != "all"):
            lines.append(f"{source:<28} {task:<42} {s['count']:>6} {s['p99']:>5} {s['max']:>5}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vocabulary",
        help=f"SentencePiece model (default: ${vocab.FLAN_VOCAB_ENV}, else {vocab.T5_VOCAB_PATH})",
    )
    for benchmark in READERS:
        parser.add_argument(f"--{benchmark}_dir", help=f"{benchmark} data directory")
    parser.add_argument("--json", help="also write the measurement to this JSON file")
    args = parser.parse_args(argv)
    directories = {b: getattr(args, f"{b}_dir") for b in READERS if getattr(args, f"{b}_dir")}
    if not directories:
        parser.error(f"give at least one of {', '.join(f'--{b}_dir' for b in READERS)}")
    vocabulary = (
        seqio.SentencePieceVocabulary(args.vocabulary, vocab.T5_EXTRA_IDS)
        if args.vocabulary
        else vocab.flan_vocabulary()
    )
    measured = measure(directories, vocabulary)
    print(format_table(measured))
    if args.json:
        record = {"vocabulary_pieces_sha256": pieces_fingerprint(vocabulary), "lengths": measured}
        epath.Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
