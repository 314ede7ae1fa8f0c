"""Template rendering, cycling, chain of thought and few-shot prompts on tf.data."""

import pytest
import tensorflow as tf

from tasks import metrics, options, templates
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


def test_a_split_with_few_distinct_examples_repeats_them_or_drops_the_query():
    # 3 distinct examples, k=5: exemplars other than the query, repeated; a split of one
    # distinct example has none for any query, which is dropped (before: an error in tf.data
    # that stopped training; a task left with no examples is still refused at start-up).
    rows = [{"q": f"question {i % 3}", "a": f"answer {i % 3}"} for i in range(9)]
    out = _texts(templates.few_shot(_dataset(rows), [Template("{q}?", "{a}")], k=5))
    assert len(out) == len(rows)
    for row, example in zip(rows, out):
        pairs, query = _shots(example["inputs"])
        assert query == row["q"] + "?" and 1 <= len(pairs) <= 5
        assert all(exemplar != query for exemplar, _ in pairs)
    single = [{"q": "same", "a": "same"}] * 4
    assert _texts(templates.few_shot(_dataset(single), [Template("{q}", "{a}")], k=2)) == []


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
    variant = templates.FewShotVariant([Template("{q}", "{a}")], shots=2)
    dataset = templates.add_exemplars(_dataset(rows), [variant])
    for example in dataset.as_numpy_iterator():
        assert example[templates.EXEMPLAR_INPUTS].shape == (2,)
        assert example["inputs"] not in example[templates.EXEMPLAR_INPUTS]


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
        "targets": "(B)",  # the marker itself, as FLAN answers lettered options
    }
    (out,) = _texts(templates.apply_templates(_dataset(rows), [template], numbered))
    assert (out["inputs"], out["targets"]) == ("Sky?\nAnswers:\n1. red\n2. blue\n3. green", "2.")
    # A template that does not list the options keeps the answer text.
    (out,) = _texts(
        templates.apply_templates(_dataset(rows), [Template("{q}", "{answer}")], lettered)
    )
    assert out["targets"] == "blue"
    with pytest.raises(ValueError, match="needs '{}' in its bullet"):
        templates.OptionsFormat("H:", "- ", templates.LETTERS)


def test_random_options_are_reproducible_and_half_plain():
    template = Template("{q}\n{options_}", "{answer}")
    rows = [{"q": str(i), "options": ["yes", "no"], "answer": "yes"} for i in range(400)]
    style = templates.RANDOM_OPTIONS_FORMATS
    first = _texts(templates.apply_templates(_dataset(rows), [template], style, seed=3))
    assert first == _texts(templates.apply_templates(_dataset(rows), [template], style, seed=3))
    assert first != _texts(templates.apply_templates(_dataset(rows), [template], style, seed=4))
    lists = [out["inputs"].split("\n", 1)[1] for out in first]
    # FLAN's zero-shot-with-options submix: its deterministic and its randomized task alike.
    plain = sum(text == "OPTIONS:\n- yes\n- no" for text in lists)
    assert 150 <= plain <= 250
    assert len(set(lists)) > 150  # headers x bullets x end strings
    headers = set(style.headers)
    labelled = 0
    for text, out in zip(lists, first):
        assert any(text.startswith(header) for header in headers)
        assert text.endswith(("no", "no;", "no."))
        if out["targets"] != "yes":  # a labelled list answers with the first marker
            labelled += 1
            assert out["targets"] + " yes" in text, (text, out["targets"])
    assert labelled > 50


def test_random_options_cover_flans_range():
    style = templates.RANDOM_OPTIONS_FORMATS
    assert len(style.headers) == 16 and {"", "OPTIONS:"} <= set(style.headers)
    assert style.ends == ("", ";", ".")
    assert style.bullets[0] == options.Bullet()  # the plain form first: "\n- "
    befores = {bullet.before for bullet in style.bullets}
    assert befores == {"\n", " ", "\n "}  # one option a line, or inline
    label_sets = {bullet.labels for bullet in style.bullets if bullet.labels}
    assert label_sets == {
        options.LETTERS,
        options.LOWER_LETTERS,
        options.NUMBERS,
        options.ROMAN,
        options.LOWER_ROMAN,
    }
    assert options.ROMAN[:4] + options.ROMAN[-2:] == ("I", "II", "III", "IV", "XXV", "XXVI")
    assert len(style.bullets) >= 90


def test_an_options_format_has_flans_end_strings_and_inline_markers():
    inline = templates.OptionsFormat("Choose:", "({}). ", options.LOWER_ROMAN, end=";", before=" ")
    template = Template("{q} {options_}", "{answer}")
    rows = [{"q": "Sky?", "options": ["red", "blue", "green"], "answer": "blue"}]
    (out,) = _texts(templates.apply_templates(_dataset(rows), [template], inline))
    assert out["inputs"] == "Sky? Choose: (i). red; (ii). blue; (iii). green;"
    assert out["targets"] == "(ii)."


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
    template_variant = [templates.FewShotVariant(template, shots=4)]
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
        templates.join_exemplars(_dataset(rows), template_variant, max_input_tokens=10)


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


_LETTERED = [Template(f"{letter} {{q}}", "{a}") for letter in "ABC"]


def _blocks(inputs, separator):
    """The exemplars' and the query's (letter, number) in a prompt of _LETTERED templates
    with the default Q:/A: delimiters."""
    *exemplars, query = inputs.split(separator)
    assert query.startswith("Q: ") and query.endswith("\nA:"), inputs
    shots = [tuple(block.removeprefix("Q: ").split("\nA: ")[0].split(" ")) for block in exemplars]
    return shots, tuple(query.removeprefix("Q: ").removesuffix("\nA:").split(" "))


def test_mixed_template_variant_renders_each_exemplar_in_its_own_template():
    """FLAN's five-shot prompts: exemplar j in the template its place in the exemplar stream
    gives (row r of the split: template r % 3), one separator for all."""
    rows = [{"q": str(i), "a": str(i)} for i in range(30)]
    variant = templates.FewShotVariant(
        _LETTERED, shots=5, exemplar_templates=templates.OWN_TEMPLATE, separator="\n\n\n"
    )
    out = _texts(templates.few_shot_variants(_dataset(rows), [variant]))
    assert len(out) == len(rows)
    mixed = 0
    for index, example in enumerate(out):
        shots, query = _blocks(example["inputs"], "\n\n\n")
        assert query == ("ABC"[index % 3], str(index))
        assert len(shots) == 5 and str(index) not in {number for _, number in shots}
        assert all(letter == "ABC"[int(number) % 3] for letter, number in shots)
        mixed += len({letter for letter, _ in shots}) > 1
    assert mixed > 20


def _flan_x_shot(task_templates, **overrides):
    """FLAN's x-shot variant: 25 candidates, each kept with probability 1/10."""
    settings = dict(shots=25, candidates=25, keep_rate=0.1)
    return templates.FewShotVariant(task_templates, **{**settings, **overrides})


def _letters(count):
    return [Template(f"T{t} {{q}}", "{a}") for t in range(count)]


@pytest.mark.parametrize("count", [1, 4, 10])
def test_x_shot_counts_follow_flans_binomial_whatever_the_template_count(count):
    """FLAN keeps each of 25 candidates whose random template (of ten) matches the query's:
    Binomial(25, 0.1), mean 2.5, variance 2.25, P(0) = 0.9^25, the same for a task of 1, 4
    or 10 templates (keeping candidates whose template matches among `count` would give
    25 / count)."""
    variant = _flan_x_shot(_letters(count))
    draws = tf.map_fn(
        lambda i: templates.kept_count(variant, i, 0), tf.range(20_000, dtype=tf.int64)
    ).numpy()
    assert abs(draws.mean() - 2.5) < 0.05
    assert abs(draws.var() - 2.25) < 0.1
    assert abs((draws == 0).mean() - 0.9**25) < 0.01
    assert draws.max() <= 25
    again = tf.map_fn(lambda i: templates.kept_count(variant, i, 0), tf.range(50, dtype=tf.int64))
    assert (again.numpy() == draws[:50]).all()  # a function of (seed, position)


@pytest.mark.parametrize("count", [1, 4, 10])
def test_x_shot_prompts_hold_the_drawn_count_in_the_querys_template(count):
    """Rendered prompts: every exemplar in the query's template, never the query itself, and
    as many as drawn; queries that drew none are dropped, so the prompts' mean is
    E[X | X > 0] = 2.5 / (1 - 0.9^25) = 2.69."""
    rows = [{"q": str(i), "a": str(i)} for i in range(400)]
    variant = _flan_x_shot(_letters(count))
    out = list(templates.few_shot_variants(_dataset(rows), [variant]).as_numpy_iterator())
    drawn = [int(templates.kept_count(variant, tf.constant(i, tf.int64), 0)) for i in range(400)]
    assert [int(ex["a"]) for ex in out] == [i for i in range(400) if drawn[i]]
    for example in out:
        inputs = example["inputs"].decode()
        *exemplars, query = inputs.split("\n\n")
        letter, number = query.removeprefix("Q: ").removesuffix("\nA:").split(" ")
        assert len(exemplars) == example[templates.NUM_EXEMPLARS] == drawn[int(number)]
        assert all(e.startswith(f"Q: {letter} ") for e in exemplars)
        assert number not in {e.removeprefix("Q: ").split(" ")[1].split("\n")[0] for e in exemplars}
    mean = sum(ex[templates.NUM_EXEMPLARS] for ex in out) / len(out)
    assert abs(mean - 2.5 / (1 - 0.9**25)) < 0.25


def test_a_query_without_exemplars_is_dropped():
    """One exemplar row equal to query 0 and none other: query 0 keeps none and is dropped,
    not kept as a zero-shot prompt; the other queries keep the row."""
    rows = [{"q": str(i), "a": str(i)} for i in range(3)]
    variant = templates.FewShotVariant(_LETTERED, shots=4, candidates=4)
    out = _texts(
        templates.few_shot_variants(
            _dataset(rows), [variant], exemplar_dataset=_dataset([{"q": "0", "a": "0"}])
        )
    )
    assert [example["inputs"] for example in out] == [
        f"Q: {letter} 0\nA: 0\n\n" * 4 + f"Q: {letter} {i}\nA:"
        for letter, i in (("B", 1), ("C", 2))
    ]


def test_a_query_whose_exemplars_do_not_fit_is_dropped():
    from tasks import demo

    vocabulary = demo.vocabulary()
    short = [{"q": f"apples {i}", "a": str(i)} for i in range(6)]
    long = [{"q": "books " * 40 + str(i), "a": str(i)} for i in range(6, 9)]
    rows = short[:3] + long + short[3:]
    template = [Template("{q}", "{a}")]
    budget = max(len(vocabulary.encode(f"Q: {row['q']}\nA:")) for row in rows) + 2
    out = _texts(
        templates.few_shot(
            _dataset(rows),
            template,
            k=2,
            max_input_tokens=budget,
            vocabulary=vocabulary,
            exemplar_dataset=_dataset(short),
        )
    )
    # Every long query fits alone but not with an exemplar: dropped. Short ones keep theirs.
    assert [example["targets"] for example in out] == [row["a"] for row in short]
    for example in out:
        assert len(vocabulary.encode(example["inputs"])) <= budget
        assert example["inputs"].count("\nA: ") >= 1


def test_a_header_gives_the_definition_once_before_the_exemplars():
    rows = [{"definition": "Double it.", "x": str(i), "y": str(2 * i)} for i in range(5)]
    fmt = templates.FewShotFormat("In: ", "\nOut: ", "\n\n", header="Task: {definition}\n\n")
    out = _texts(
        templates.few_shot(_dataset(rows), [Template("{x}", "{y}")], k=2, fewshot_format=fmt)
    )
    for index, example in enumerate(out):
        inputs = example["inputs"]
        assert inputs.startswith("Task: Double it.\n\nIn: ")
        assert inputs.count("Double it.") == 1
        assert inputs.endswith(f"\n\nIn: {index}\nOut:")
        exemplars = inputs.removeprefix("Task: Double it.\n\n").split("\n\n")[:-1]
        assert len(exemplars) == 2
        for exemplar in exemplars:
            x, y = exemplar.removeprefix("In: ").split("\nOut: ")
            assert int(y) == 2 * int(x) and x != str(index)


def test_variants_take_turns_and_inline_patterns_keep_their_text():
    rows = [{"q": str(i), "a": str(i)} for i in range(12)]
    inline = templates.FewShotVariant([Template("Inline {q}", "{a}")], shots=0)
    shots = templates.FewShotVariant([Template("{q}", "{a}")], shots=1)
    out = _texts(templates.few_shot_variants(_dataset(rows), [inline, shots]))
    assert [example["inputs"] for example in out[::2]] == [f"Inline {i}" for i in range(0, 12, 2)]
    for index, example in enumerate(out[1::2]):
        exemplar, query = example["inputs"].split("\n\n")
        assert query == f"Q: {2 * index + 1}\nA:" and exemplar.startswith("Q: ")
