"""Template rendering, cycling, chain of thought and few-shot prompts on tf.data."""

import pytest
import tensorflow as tf

from tasks import metrics, templates
from tasks.templates import Template


def _dataset(rows):
    """A tf.data.Dataset of dict rows; list values become string vectors of any length."""
    signature = {
        key: tf.TensorSpec([None] if isinstance(value, list) else [], tf.string)
        for key, value in rows[0].items()
    }
    return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=signature)


def _texts(dataset):
    return [
        {key: value.decode() for key, value in example.items() if isinstance(value, bytes)}
        for example in dataset.as_numpy_iterator()
    ]


def test_field_values_render_literally():
    value = r"a\1 $0 \\ \n .* [x]{2} (?P<g>) {answer} %s"
    template = Template("Q: {question} | {{not a slot}} \\d", "{answer}")
    (out,) = _texts(
        templates.apply_templates(_dataset([{"question": value, "answer": "$1"}]), [template])
    )
    assert out["inputs"] == "Q: " + value + " | {not a slot} \\d"
    assert out["targets"] == "$1"
    assert out["question"] == value  # other features pass through


def test_integer_fields_render_as_decimal():
    dataset = tf.data.Dataset.from_tensor_slices({"n": tf.constant([-7, 42], tf.int64)})
    out = _texts(templates.apply_templates(dataset, [Template("n={n}", "{n}")]))
    assert [(o["inputs"], o["targets"]) for o in out] == [("n=-7", "-7"), ("n=42", "42")]


def test_options_render_in_flan_format_for_any_number_of_options():
    template = Template("Pick one.\n{options_}", "{answer}")
    rows = [
        {"options": ["red", "green", "blue"], "answer": "red"},
        {"options": ["yes", "no"], "answer": "no"},
    ]
    out = _texts(templates.apply_templates(_dataset(rows), [template]))
    assert out[0]["inputs"] == "Pick one.\nOPTIONS:\n- red\n- green\n- blue"
    assert out[1]["inputs"] == "Pick one.\nOPTIONS:\n- yes\n- no"
    styled = templates.OptionsFormat(header="Choices:", bullet="* ")
    (first, _) = _texts(templates.apply_templates(_dataset(rows), [template], styled))
    assert first["inputs"] == "Pick one.\nChoices:\n* red\n* green\n* blue"


def test_templates_cycle_over_consecutive_examples():
    cycle = [Template(f"T{i}: {{x}}", "{x}") for i in range(3)]
    rows = [{"x": str(i)} for i in range(7)]
    out = _texts(templates.apply_templates(_dataset(rows), cycle))
    assert [o["inputs"] for o in out] == [f"T{i % 3}: {i}" for i in range(7)]
    assert out == _texts(templates.apply_templates(_dataset(rows), cycle))


def test_cot_template_puts_trigger_after_inputs_and_answer_after_rationale():
    template = templates.cot_template("Q: {question}")
    row = {"question": "2 + 3?", "rationale": "Two plus three is five.", "answer": "5"}
    (out,) = _texts(templates.apply_templates(_dataset([row]), [template]))
    assert out["inputs"] == "Q: 2 + 3?\nLet's think step by step."
    assert out["targets"] == "Two plus three is five. So the answer is 5."
    assert metrics.cot_answer(out["targets"], is_target=True) == "5"


def test_cot_answer_tolerates_malformed_output():
    assert metrics.cot_answer("So the answer is 3.5.") == "3.5"
    assert metrics.cot_answer(b"x. So the answer is 7. So the answer is 9.") == "7"
    assert metrics.cot_answer("So the answer is yes\nand more") == "yes"
    assert metrics.cot_answer("  12 ") == "12"  # no rationale: the text is the answer
    assert metrics.cot_answer("rambling So the answer is") == ""
    assert metrics.cot_answer("") == ""


def _shots(inputs):
    """The (inputs, targets) exemplars and the query of a default-format few-shot prompt."""
    *exemplars, query = inputs.split("\n\n")
    pairs = [tuple(block.removeprefix("Q: ").split("\nA: ")) for block in exemplars]
    assert query.startswith("Q: ") and query.endswith("\nA:"), query
    return pairs, query.removeprefix("Q: ").removesuffix("\nA:")


def test_few_shot_has_k_delimited_exemplars_and_never_the_example_itself():
    rows = [{"q": f"question {i % 6}", "a": f"answer {i % 6}"} for i in range(24)]  # duplicates
    template = Template("{q}?", "{a}")
    out = _texts(templates.few_shot(_dataset(rows), [template], k=3))
    assert len(out) == len(rows)
    for row, example in zip(rows, out):
        pairs, query = _shots(example["inputs"])
        assert query == row["q"] + "?"
        assert example["targets"] == row["a"]
        assert len(pairs) == 3
        for exemplar_inputs, exemplar_targets in pairs:
            assert exemplar_inputs != query
            assert (exemplar_inputs, exemplar_targets) in {
                (f"question {j}?", f"answer {j}") for j in range(6)
            }
    assert out == _texts(templates.few_shot(_dataset(rows), [template], k=3))


def test_few_shot_renders_exemplars_with_the_query_template():
    cycle = [Template("A {q}", "{a}"), Template("B {q}", "{a}")]
    rows = [{"q": str(i), "a": str(i)} for i in range(10)]
    fmt = templates.FewShotFormat(input_prefix="Input: ", target_prefix="\nOutput: ")
    out = _texts(templates.few_shot(_dataset(rows), cycle, k=2, fewshot_format=fmt))
    for index, example in enumerate(out):
        prefix = "AB"[index % 2]
        blocks = example["inputs"].split("\n\n")
        assert len(blocks) == 3
        assert blocks[-1] == f"Input: {prefix} {index}\nOutput:"
        for block in blocks[:-1]:
            assert block.startswith(f"Input: {prefix} ")
            number = block.removeprefix(f"Input: {prefix} ").split("\n")[0]
            assert block == f"Input: {prefix} {number}\nOutput: {number}"
            assert number != str(index)


def test_add_exemplars_keeps_exemplars_as_vectors_for_later_steps():
    rows = [{"q": str(i), "a": str(i)} for i in range(5)]
    dataset = templates.add_exemplars(_dataset(rows), [Template("{q}", "{a}")], k=2)
    for example in dataset.as_numpy_iterator():
        assert example[templates.EXEMPLAR_INPUTS].shape == (2,)
        assert example["inputs"] not in example[templates.EXEMPLAR_INPUTS]


def test_few_shot_fails_loudly_when_the_split_is_too_small():
    rows = [{"q": "same", "a": "same"}] * 4
    dataset = templates.few_shot(_dataset(rows), [Template("{q}", "{a}")], k=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Raise num_candidates or lower k"):
        _texts(dataset)


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("unclosed {brace", "malformed"),
        ("{x!r}", "plain feature name"),
        ("{x:>4}", "plain feature name"),
        ("{}", "plain feature name"),
    ],
)
def test_bad_patterns_are_rejected_when_defined(pattern, message):
    with pytest.raises(ValueError, match=message):
        Template(pattern, "{y}")


def test_missing_fields_are_named():
    dataset = _dataset([{"question": "q"}])
    with pytest.raises(KeyError, match="answer"):
        templates.apply_templates(dataset, [Template("{question}", "{answer}")])


def test_template_reports_its_fields_and_literals():
    template = Template("Q: {question}\n{options_}", "{answer}.")
    assert template.fields == {"question", "options", "answer"}
    assert template.literals == ("Q: ", "\n", ".")


def test_without_options_drops_the_slot_and_its_blank_lines():
    template = Template("{premise}\n\nTrue?\n\n{options_}", "{answer}")
    assert template.without_options() == Template("{premise}\n\nTrue?", "{answer}")
    middle = Template("Q: {q}\n{options_}\nAnswer:", "{a}")
    assert middle.without_options().inputs == "Q: {q}\nAnswer:"
    assert Template("{q}", "{a}").without_options() == Template("{q}", "{a}")


def test_labelled_options_rewrite_the_target_to_the_label():
    lettered = templates.OptionsFormat("Pick one:", "({}) ", templates.LETTERS)
    numbered = templates.OptionsFormat("Answers:", "{}. ", templates.NUMBERS)
    template = Template("{q}\n{options_}", "{answer}")
    rows = [{"q": "Sky?", "options": ["red", "blue", "green"], "answer": "blue"}]
    (out,) = _texts(templates.apply_templates(_dataset(rows), [template], lettered))
    assert out == {
        "q": "Sky?",
        "answer": "blue",
        "inputs": "Sky?\nPick one:\n(A) red\n(B) blue\n(C) green",
        "targets": "B",
    }
    (out,) = _texts(templates.apply_templates(_dataset(rows), [template], numbered))
    assert (out["inputs"], out["targets"]) == ("Sky?\nAnswers:\n1. red\n2. blue\n3. green", "2")
    # A template that does not list the options keeps the answer text.
    (out,) = _texts(
        templates.apply_templates(_dataset(rows), [Template("{q}", "{answer}")], lettered)
    )
    assert out["targets"] == "blue"
    with pytest.raises(ValueError, match="needs '{}' in its bullet"):
        templates.OptionsFormat("H:", "- ", templates.LETTERS)


def test_several_option_formats_are_drawn_per_example_from_the_seed():
    template = Template("{q}\n{options_}", "{answer}")
    rows = [{"q": str(i), "options": ["yes", "no"], "answer": "yes"} for i in range(40)]
    formats = templates.RANDOM_OPTIONS_FORMATS
    first = _texts(templates.apply_templates(_dataset(rows), [template], formats, seed=3))
    assert first == _texts(templates.apply_templates(_dataset(rows), [template], formats, seed=3))
    assert first != _texts(templates.apply_templates(_dataset(rows), [template], formats, seed=4))
    headers = {out["inputs"].split("\n")[1] for out in first}
    assert len(headers) >= 4 and headers <= {f.header for f in formats}


def test_template_index_is_recorded_and_picks_the_few_shot_delimiters():
    cycle = [Template("A {q}", "{a}"), Template("B {q}", "{a}")]
    rows = [{"q": str(i), "a": str(i)} for i in range(8)]
    formats = [templates.FewShotFormat(), templates.FewShotFormat("Input: ", "\nOutput: ")]
    dataset = templates.few_shot(_dataset(rows), cycle, k=1, fewshot_format=formats)
    for index, example in enumerate(dataset.as_numpy_iterator()):
        assert example[templates.TEMPLATE_INDEX] == index % 2
        inputs = example["inputs"].decode()
        if index % 2:
            assert inputs.startswith("Input: B ") and inputs.endswith(f"Input: B {index}\nOutput:")
        else:
            assert inputs.startswith("Q: A ") and inputs.endswith(f"Q: A {index}\nA:")


def test_exemplars_are_pruned_to_the_token_budget():
    from tasks import demo

    vocabulary = demo.vocabulary()
    rows = [{"q": f"question number {i} is about apples and books", "a": str(i)} for i in range(12)]
    template = [Template("{q}", "{a}")]
    full = _texts(templates.few_shot(_dataset(rows), template, k=4))
    lengths = [len(vocabulary.encode(out["inputs"])) for out in full]
    budget = min(lengths) - 1
    pruned = _texts(
        templates.few_shot(
            _dataset(rows), template, k=4, max_input_tokens=budget, vocabulary=vocabulary
        )
    )
    for short, long in zip(pruned, full):
        assert len(vocabulary.encode(short["inputs"])) <= budget
        assert long["inputs"].endswith(short["inputs"].split("\n\n")[-1])
        assert 1 <= short["inputs"].count("\nA: ") < 4  # trailing exemplars dropped, not all
    with pytest.raises(ValueError, match="needs the vocabulary"):
        templates.join_exemplars(_dataset(rows), max_input_tokens=10)


def test_exemplars_can_come_from_another_split():
    rows = [{"q": f"v{i}", "a": "x"} for i in range(3)]
    train = [{"q": f"t{i}", "a": "y"} for i in range(5)]
    out = _texts(
        templates.few_shot(
            _dataset(rows), [Template("{q}", "{a}")], k=2, exemplar_dataset=_dataset(train)
        )
    )
    for example in out:
        pairs, _ = _shots(example["inputs"])
        assert all(q.startswith("t") and a == "y" for q, a in pairs)
