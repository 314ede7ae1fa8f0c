"""MGSM (Shi et al.): 250 GSM8K problems translated into ten languages, 8-shot chain of
thought with exemplars and reasoning in the problem's own language, scored on the final number.

Layout under $FLAN_JAX_MGSM_DIR (the google-research/url-nlp `mgsm/` folder):

    mgsm_{lang}.tsv   headerless: question <TAB> answer number
    exemplars.py      MGSM_EXEMPLARS = {lang: {"1": {"q": "<Question>: ...",
                      "a": "<Step-by-Step Answer>: ... <The answer is> 11."}, ... "8": ...}}

exemplars.py is read as data (`ast.literal_eval` of that one assignment), never executed.
The query reuses the exemplars' own question and answer headers, so the whole prompt is in
the target language.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from collections.abc import Sequence

import seqio

from tasks import metrics
from tasks.eval import readers

DATA_DIR_ENV = "FLAN_JAX_MGSM_DIR"
EXEMPLARS_FILE = "exemplars.py"
EXEMPLARS_NAME = "MGSM_EXEMPLARS"
LANGUAGES = ("bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
NUM_SHOTS = 8
# A header runs up to the first colon, ASCII or full-width (Chinese, Japanese).
_HEADER = re.compile(r"^([^:：\n]*[:：]\s*)")


@functools.cache
def read_exemplars(path: str) -> dict[str, list[dict]]:
    """{lang: [{"q", "a"}, ...]} from exemplars.py; errors name path:line."""
    with readers.open_text(path, "MGSM exemplars") as f:
        source = f.read()
    try:
        module = ast.parse(source, path)
    except SyntaxError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid Python ({e.msg})") from None
    for node in module.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == EXEMPLARS_NAME for t in node.targets
        ):
            try:
                table = ast.literal_eval(node.value)
            except ValueError:
                raise ValueError(
                    f"{path}:{node.lineno}: {EXEMPLARS_NAME} must be a literal dict"
                ) from None
            break
    else:
        raise ValueError(f"{path}:1: no {EXEMPLARS_NAME} = {{...}} assignment")
    exemplars = {}
    for language, shots in readers.field({"table": table}, "table", dict, path).items():
        where = f"{path}: {EXEMPLARS_NAME}[{language!r}]"
        if not isinstance(shots, dict):
            raise ValueError(f"{where}: expected a dict {{'1': {{'q': ..., 'a': ...}}, ...}}")
        exemplars[language] = [
            {key: readers.field(shot, key, str, f"{where}[{number!r}]") for key in ("q", "a")}
            for number, shot in sorted(shots.items(), key=lambda item: int(item[0]))
        ]
    return exemplars


def header(text: str, where: str) -> str:
    """The "Question: " / "问题：" prefix an exemplar's text starts with."""
    match = _HEADER.match(text)
    if not match:
        raise ValueError(f"{where}: expected the text to start with a header ending in ':'")
    return match.group(1)


def prompt(shots: list[dict], question: str, where: str) -> str:
    question_header = header(shots[0]["q"], where)
    answer_header = header(shots[0]["a"], where).rstrip()
    exemplars = "".join(f"{shot['q']}\n{shot['a']}\n\n" for shot in shots)
    return f"{exemplars}{question_header}{question}\n{answer_header}"


@functools.cache
def examples(language: str, directory: str) -> list[dict]:
    exemplars_path = os.path.join(directory, EXEMPLARS_FILE)
    shots = read_exemplars(exemplars_path).get(language, [])[:NUM_SHOTS]
    if not shots:
        raise ValueError(f"{exemplars_path}: {EXEMPLARS_NAME} has no {language!r} exemplars")
    where = f"{exemplars_path}: {EXEMPLARS_NAME}[{language!r}]"
    path = os.path.join(directory, f"mgsm_{language}.tsv")
    rows = readers.read_tsv(path, 2)
    for number, (_, answer) in enumerate(rows, 1):
        if not metrics.final_number(answer):
            raise ValueError(f"{path}:{number}: the answer field must be a number, got {answer!r}")
    return [
        {"inputs": prompt(shots, question, where), "targets": answer} for question, answer in rows
    ]


def chance_rate(subtask: str) -> float:
    """Answers are free numbers: a random guess is never right."""
    del subtask
    return 0.0


def register(vocabulary: seqio.Vocabulary, keep: Sequence[str] | None = None) -> None:
    """Tasks mgsm_{lang} and the mixture mgsm over the languages in `keep` (all by default)."""
    readers.register_suite(
        "mgsm",
        LANGUAGES,
        keep,
        lambda language, split: examples(language, readers.data_dir(DATA_DIR_ENV, "MGSM")),
        benchmark="MGSM",
        splits=("test",),
        vocabulary=vocabulary,
        postprocess_fn=metrics.final_number,
        metric_fn=metrics.accuracy,
    )
