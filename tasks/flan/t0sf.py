"""T0-SF tasks: prompted variants of T0's training datasets that Muffin does not cover.

As in P3 (where the paper's 193 T0-SF tasks come from), a task is one dataset under one
prompt, so a dataset gives several tasks: answering, explaining, generating a question or
a title. Datasets of Flan 2021 (xsum) are Muffin's, as in FLAN, which leaves them out of
its T0 submix. The prompts are our own. Importing registers the tasks.
"""

from __future__ import annotations

import tensorflow as tf

from tasks.flan import fields, registry, sources
from tasks.flan.registry import FlanTask
from tasks.templates import Template

FAMILY = "t0sf"


def _cos_e(example):
    options = example["choices"]
    return {
        "question": example["question"],
        "options": options,
        "answer": example["answer"],
        "explanation": example["abstractive_explanation"],
    }


def _qasc(example):
    choices = example["choices"]
    options = choices["text"]
    index = fields.key_index(choices["label"], example["answerKey"])
    return {
        "question": example["question"],
        "options": options,
        "answer": fields.first(options[index : index + 1]),
        "fact1": example["fact1"],
        "fact2": example["fact2"],
        "combined_fact": example["combinedfact"],
    }


def _wiki_bio(example):
    table = example["input_text"]["table"]
    rows = tf.minimum(tf.size(table["column_header"]), tf.size(table["content"]))
    rows = tf.strings.join([table["column_header"][:rows], ": ", table["content"][:rows]])
    return {
        "facts": tf.strings.reduce_join(rows, separator="\n"),
        "name": example["input_text"]["context"],
        "target": example["target_text"],
    }


def _web_questions(example):
    return {"question": example["question"], "target": fields.first(example["answers"])}


# dataset -> (TFDS name, converter, {prompt name: template})
# One template or task a line (ruff.toml's E501 exception for this file).
# fmt: off
_DATASETS = {
    "cos_e": ("cos_e:0.0.1", _cos_e, {
        "question_option_description_text": Template("{question}\n{options_}", "{answer}"),
        "rationale": Template("Question: {question}\nAnswer: {answer}\nWhy is that the answer?", "{explanation}"),
        "generate_explanation_given_text": Template("{question}\n{options_}\nThe answer is \"{answer}\" because", "{explanation}"),
        "i_think": Template("{question}\nI think the answer is \"{answer}\". Which fact supports it?", "{explanation}"),
        "aligned_with_common_sense": Template("Pick the option most aligned with common sense.\n{question}\n{options_}", "{answer}"),
    }),
    "qasc": ("qasc:0.1.0", _qasc, {
        "qa_with_separated_facts": Template("Fact 1: {fact1}\nFact 2: {fact2}\n\nGiven the facts, {question}\n{options_}", "{answer}"),
        "qa_with_combined_facts": Template("Knowing that {combined_fact}, answer: {question}\n{options_}", "{answer}"),
        "is_correct": Template("{question}\nIs \"{answer}\" a correct answer? Explain with a fact.", "{combined_fact}"),
        "combine_facts": Template("Combine these facts into one.\n{fact1}\n{fact2}", "{combined_fact}"),
    }),
    "wiki_bio": ("wiki_bio:0.1.0", _wiki_bio, {
        "who": Template("Facts:\n{facts}\n\nBased on these facts, write a short biography of {name}.", "{target}"),
        "comprehension": Template("Read the table below and write a paragraph about the person.\n{facts}", "{target}"),
        "guess_person": Template("{facts}\n\nWho is this person?", "{name}"),
        "key_content": Template("Biography: {target}\n\nList the key facts of this biography.", "{facts}"),
    }),
    "web_questions": ("web_questions:1.0.0", _web_questions, {
        "whats_the_answer": Template("What is the answer to this question? {question}", "{target}"),
        "short_general_knowledge": Template("Short general knowledge question: {question}", "{target}"),
        "question_answer": Template("Question: {question}\nAnswer:", "{target}"),
        "potential_correct_answer": Template("Give a correct answer to: {question}", "{target}"),
    }),
}
# fmt: on


def register() -> tuple[str, ...]:
    """Registers every T0-SF task (dataset x prompt); returns the seqio task names."""
    names = ()
    for dataset, (tfds_name, to_fields, prompts) in _DATASETS.items():
        source = sources.tfds_source(tfds_name, splits=("train",))
        for prompt, template in prompts.items():
            task = FlanTask(f"{dataset}_{prompt}", FAMILY, source, (template,), to_fields)
            names += registry.register(task)
    return names


TASK_NAMES = register()
