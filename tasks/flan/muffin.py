"""Muffin (Flan 2021) tasks over TFDS datasets, with our own templates in the Flan style.

Templates are grouped by task type (NLI, paraphrase, sentiment, ...) and shared by the
datasets of that type; each lists its answer options with `{options_}`, and the registry
derives the no-options variant by dropping that slot. Importing registers the tasks.
"""

from __future__ import annotations

import tensorflow as tf

from tasks.flan import fields, registry, sources
from tasks.flan.registry import FlanTask, templates_from_pairs

FAMILY = "muffin"

# One template or task a line (ruff.toml's E501 exception for this file).
# fmt: off
NLI = templates_from_pairs([
    ('{premise}\n\nBased on the paragraph above, can we conclude that "{hypothesis}"?\n\n{options_}', "{answer}"),
    ("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis?\n{options_}", "{answer}"),
    ("{premise}\n\nIs it true that {hypothesis}?\n{options_}", "{answer}"),
    ("Read the text and decide whether the sentence follows from it.\n\nText: {premise}\n\nSentence: {hypothesis}\n{options_}\nAnswer:", "{answer}"),
])
PARAPHRASE = templates_from_pairs([
    ('Do "{sentence1}" and "{sentence2}" mean the same thing?\n{options_}', "{answer}"),
    ("Sentence 1: {sentence1}\nSentence 2: {sentence2}\n\nAre these two sentences paraphrases of each other?\n{options_}", "{answer}"),
    ("{sentence1}\n{sentence2}\n\nSay whether the two texts above convey the same meaning.\n{options_}", "{answer}"),
])
SENTIMENT = templates_from_pairs([
    ("{text}\n\nWhat is the sentiment of this text?\n{options_}", "{answer}"),
    ("Is the sentiment of the following review positive or negative?\n{text}\n{options_}", "{answer}"),
    ('How would you describe the tone of "{text}"?\n{options_}', "{answer}"),
])
ACCEPTABILITY = templates_from_pairs([
    ('Is the sentence "{sentence}" grammatically acceptable?\n{options_}', "{answer}"),
    ("{sentence}\n\nWould a linguist rate this sentence as acceptable English?\n{options_}", "{answer}"),
])
TOPIC = templates_from_pairs([
    ("{text}\n\nWhat is this text about?\n{options_}", "{answer}"),
    ("Which topic does the following belong to?\n\n{text}\n{options_}", "{answer}"),
    ("Classify the topic of this passage.\n{text}\n{options_}\nTopic:", "{answer}"),
])
MULTIPLE_CHOICE = templates_from_pairs([
    ("{question}\n\n{options_}", "{answer}"),
    ("Answer the question.\n{question}\n{options_}\nAnswer:", "{answer}"),
    ("Question: {question}\n\nWhich option is correct?\n{options_}", "{answer}"),
])
COMPLETION = templates_from_pairs([
    ("How does the text continue?\n\n{context}\n{options_}", "{answer}"),
    ("{context}\n\nWhat is the most natural continuation?\n{options_}", "{answer}"),
    ("Finish the sentence: {context}\n{options_}", "{answer}"),
])
READING_YES_NO = templates_from_pairs([
    ("{passage}\n\nBased on the passage, {question}?\n{options_}", "{answer}"),
    ("Read the text and answer the question.\n\n{passage}\n\nQuestion: {question}?\n{options_}", "{answer}"),
    ("{passage}\n\nIs the following true: {question}?\n{options_}", "{answer}"),
])
WORD_SENSE = templates_from_pairs([
    ('Does the word "{word}" mean the same thing in "{sentence1}" and "{sentence2}"?\n{options_}', "{answer}"),
    ("Sentence A: {sentence1}\nSentence B: {sentence2}\n\nIs \"{word}\" used with the same meaning in both?\n{options_}", "{answer}"),
])
PRONOUN = templates_from_pairs([
    ('{sentence}\n\nWho is "{pronoun}" in this sentence?\n{options_}', "{answer}"),
    ('In "{sentence}", what does the pronoun "{pronoun}" refer to?\n{options_}', "{answer}"),
])
CAUSE_EFFECT = templates_from_pairs([
    ("{premise}\n\nWhat was the {question}?\n{options_}", "{answer}"),
    ("Premise: {premise}\nWhat is the {question} of this?\n{options_}", "{answer}"),
])
CLOSED_BOOK = templates_from_pairs([
    ("{question}", "{target}"),
    ("Answer the following question.\n{question}", "{target}"),
    ("Q: {question}\nA:", "{target}"),
    ("Please answer this question: {question}", "{target}"),
])
EXTRACTIVE_QA = templates_from_pairs([
    ("{context}\n\n{question}", "{target}"),
    ("Read this and answer the question.\n\n{context}\n\nQuestion: {question}", "{target}"),
    ("{context}\n\nAnswer this question, with a span of the text above: {question}", "{target}"),
])
SUMMARIZATION = templates_from_pairs([
    ("{text}\n\nSummarize the text above.", "{target}"),
    ("Write a short summary of this:\n\n{text}", "{target}"),
    ("{text}\nTL;DR:", "{target}"),
    ("What is a one-sentence summary of the following?\n{text}", "{target}"),
])
SUBJECT_LINE = templates_from_pairs([
    ("{text}\n\nWrite a subject line for this email.", "{target}"),
    ("Email:\n{text}\n\nWhat is a good subject for this email?", "{target}"),
])
# fmt: on

_YES_NO = ("yes", "no")
_NLI3 = ("yes", "it is not possible to tell", "no")
_POS_NEG = ("negative", "positive")


def _nli(renames, options, label="label"):
    return fields.labelled(renames, label, options)


def _arc_options(example):
    return example["choices"]["text"]


def _arc_answer(example, options):
    del options
    return fields.key_index(example["choices"]["label"], example["answerKey"])


def _pair_options(*keys):
    return lambda example: tf.stack([example[key] for key in keys])


def _label_answer(label):
    return lambda example, options: tf.cast(example[label], tf.int64)


def _sentiment140(example):
    """polarity: 0 negative, 4 positive (2, neutral, occurs only in its test split)."""
    options = tf.constant(_POS_NEG)
    return {
        "text": example["text"],
        "options": options,
        "answer": tf.gather(options, tf.cast(example["polarity"] >= 2, tf.int64)),
    }


def _winogrande(example):
    """FLAN's reading: the sentence up to its blank is the context, and each option is a name
    followed by the rest of the sentence ("... because the" / "trophy is too large.")."""
    split = tf.strings.split(example["sentence"], "_", maxsplit=1)
    context, rest = tf.unstack(tf.concat([split, ["", ""]], 0)[:2])
    options = tf.stack([example["option1"] + rest, example["option2"] + rest])
    return {"context": context, **fields.answered(options, tf.cast(example["label"], tf.int64))}


def _openbookqa(example):
    question = example["question"]
    options = tf.stack([question[f"choice_{letter}"] for letter in "ABCD"])
    return {
        "question": question["stem"],
        "options": options,
        "answer": tf.gather(options, example["answerKey"]),
    }


# (name, TFDS name, converter, templates, splits)
# fmt: off
_TASKS = [
    ("anli_r1", "anli/r1:0.1.0", _nli({"premise": "context", "hypothesis": "hypothesis"}, _NLI3), NLI),
    ("anli_r2", "anli/r2:0.1.0", _nli({"premise": "context", "hypothesis": "hypothesis"}, _NLI3), NLI),
    ("anli_r3", "anli/r3:0.1.0", _nli({"premise": "context", "hypothesis": "hypothesis"}, _NLI3), NLI),
    ("rte", "glue/rte:2.0.0", _nli({"premise": "sentence1", "hypothesis": "sentence2"}, _YES_NO), NLI),
    ("mnli", "glue/mnli:2.0.0", _nli({"premise": "premise", "hypothesis": "hypothesis"}, _NLI3), NLI),
    ("snli", "snli:1.1.0", _nli({"premise": "premise", "hypothesis": "hypothesis"}, _NLI3), NLI),
    ("cb", "super_glue/cb:1.0.2", _nli({"premise": "premise", "hypothesis": "hypothesis"}, ("yes", "no", "it is not possible to tell")), NLI),
    ("mrpc", "glue/mrpc:2.0.0", fields.labelled({"sentence1": "sentence1", "sentence2": "sentence2"}, "label", ("no", "yes")), PARAPHRASE),
    ("qqp", "glue/qqp:2.0.0", fields.labelled({"sentence1": "question1", "sentence2": "question2"}, "label", ("no", "yes")), PARAPHRASE),
    ("paws_wiki", "paws_wiki:1.1.0", fields.labelled({"sentence1": "sentence1", "sentence2": "sentence2"}, "label", ("no", "yes")), PARAPHRASE),
    ("sst2", "glue/sst2:2.0.0", fields.labelled({"text": "sentence"}, "label", _POS_NEG), SENTIMENT),
    ("imdb_reviews", "imdb_reviews/plain_text:1.0.0", fields.labelled({"text": "text"}, "label", _POS_NEG), SENTIMENT),
    ("yelp_polarity", "yelp_polarity_reviews:0.2.0", fields.labelled({"text": "text"}, "label", _POS_NEG), SENTIMENT),
    # sentiment140 polarity: 0 negative, 4 positive (2, neutral, only in its test split).
    ("sentiment140", "sentiment140:1.0.0", _sentiment140, SENTIMENT),
    ("cola", "glue/cola:2.0.0", fields.labelled({"sentence": "sentence"}, "label", ("no", "yes")), ACCEPTABILITY),
    ("ag_news", "ag_news_subset:1.0.0", fields.labelled({"text": "description"}, "label", ("World", "Sports", "Business", "Science and technology")), TOPIC),
    ("trec", "trec:1.0.0", fields.labelled({"text": "text"}, "label-coarse", ("description", "entity", "abbreviation", "human", "number", "location")), TOPIC),
    ("arc_challenge", "ai2_arc/ARC-Challenge:1.0.0", fields.choices({"question": "question"}, _arc_options, _arc_answer), MULTIPLE_CHOICE),
    ("arc_easy", "ai2_arc/ARC-Easy:1.0.0", fields.choices({"question": "question"}, _arc_options, _arc_answer), MULTIPLE_CHOICE),
    ("openbookqa", "openbookqa:0.1.0", _openbookqa, MULTIPLE_CHOICE),
    ("piqa", "piqa:1.0.0", fields.choices({"question": "goal"}, _pair_options("sol1", "sol2"), _label_answer("label")), MULTIPLE_CHOICE),
    ("winogrande", "winogrande:1.2.0", _winogrande, COMPLETION),
    ("hellaswag", "hellaswag:1.1.0", fields.choices({"context": "context"}, lambda ex: ex["endings"], _label_answer("label")), COMPLETION),
    ("copa", "super_glue/copa:1.0.2", fields.choices({"premise": "premise", "question": "question"}, _pair_options("choice1", "choice2"), _label_answer("label")), CAUSE_EFFECT),
    ("boolq", "super_glue/boolq:1.0.2", fields.labelled({"passage": "passage", "question": "question"}, "label", ("no", "yes")), READING_YES_NO),
    ("wic", "super_glue/wic:1.0.2", fields.labelled({"word": "word", "sentence1": "sentence1", "sentence2": "sentence2"}, "label", ("no", "yes")), WORD_SENSE),
    ("definite_pronoun_resolution", "definite_pronoun_resolution:1.1.0", fields.choices({"sentence": "sentence", "pronoun": "pronoun"}, lambda ex: ex["candidates"], _label_answer("label")), PRONOUN),
    ("trivia_qa", "trivia_qa/rc.nocontext:1.1.0", fields.text_pair({"question": "question"}, "", lambda ex: ex["answer"]["value"]), CLOSED_BOOK),
    ("natural_questions", "natural_questions_open:1.0.0", fields.text_pair({"question": "question"}, "", lambda ex: fields.first(ex["answer"])), CLOSED_BOOK),
    ("squad_v1", "squad/v1.1:3.0.0", fields.text_pair({"context": "context", "question": "question"}, "", lambda ex: fields.first(ex["answers"]["text"])), EXTRACTIVE_QA),
    ("gigaword", "gigaword:1.2.0", fields.text_pair({"text": "document"}, "summary"), SUMMARIZATION),
    ("cnn_dailymail", "cnn_dailymail:3.4.0", fields.text_pair({"text": "article"}, "highlights"), SUMMARIZATION),
    ("samsum", "samsum:1.0.0", fields.text_pair({"text": "dialogue"}, "summary"), SUMMARIZATION),
    ("xsum", "xsum:1.1.0", fields.text_pair({"text": "document"}, "summary"), SUMMARIZATION),
    ("aeslc", "aeslc:1.0.0", fields.text_pair({"text": "email_body"}, "subject_line"), SUBJECT_LINE),
]
# fmt: on


# Tasks whose TFDS dataset has no `train` split: seqio split -> TFDS split (winogrande's
# training sets come in sizes; FLAN trains on the largest).
_TFDS_SPLITS = {"winogrande": {"train": "train_xl"}}


def register() -> tuple[str, ...]:
    """Registers every Muffin task; returns the seqio task names."""
    names = ()
    for name, tfds_name, to_fields, task_templates in _TASKS:
        source = sources.tfds_source(tfds_name, tfds_splits=_TFDS_SPLITS.get(name))
        task = FlanTask(name, FAMILY, source, task_templates, to_fields)
        names += registry.register(task)
    return names


TASK_NAMES = register()
