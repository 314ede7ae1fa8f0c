"""The Flan tasks: registration over the real sources, every format's rendering (golden),
few-shot exemplars and their token budget, metadata, determinism."""

import json

import gin
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from flan_testing import LENGTHS, NIV2_DIR, texts

from tasks import templates
from tasks.flan import muffin, niv2, registry, sources, t0sf


def test_registers_the_four_families_in_their_formats(flan_env):
    assert len(registry.REGISTERED["muffin"]) >= 20
    assert len(registry.REGISTERED["t0sf"]) >= 15  # xsum is Muffin's
    inversions = [f"{dataset}_ii" for dataset in flan_env.cot.DATASETS]
    assert sorted(registry.REGISTERED["cot"]) == sorted([*flan_env.cot.DATASETS, *inversions])
    assert sorted(registry.REGISTERED["niv2"]) == [
        "task001_capitals_answer_generation",
        "task002_plural_generation",
        "task003_sum_of_two_numbers",
    ]
    names = set(seqio.TaskRegistry.names())
    assert {
        "muffin_rte_zs_opt",
        "muffin_rte_zs_noopt",
        "muffin_rte_fs_opt",
        "muffin_rte_fs_noopt",
    } <= names
    assert {"muffin_squad_v1_zs_noopt", "muffin_squad_v1_fs_noopt"} <= names
    assert "muffin_squad_v1_zs_opt" not in names  # no options to list
    assert {"cot_gsm8k_zs_cot", "cot_gsm8k_fs_cot"} <= names
    assert not any("mmmlu" in name or "science_quiz" in name for name in names)


def test_every_tfds_task_reads_its_dataset_under_mock_data(flan_env):
    """Each Muffin and T0-SF converter reads its dataset's real features (TFDS mock data),
    and each of its templates renders; run eagerly, one example per dataset."""
    rendered = 0
    with tfds.testing.mock_data(num_examples=1):
        for task in [
            *registry.REGISTERED["muffin"].values(),
            *registry.REGISTERED["t0sf"].values(),
        ]:
            example = next(iter(task.source.get_dataset(task.train_split)))
            fields = task.to_fields(example)
            if not tf.size(fields.get(templates.OPTIONS_FIELD, [""])):
                continue  # a label that is no option's index (mock hellaswag's): dropped
            for template in task.templates:
                inputs, targets = template.render(fields)
                assert inputs.numpy() and targets.dtype == tf.string, task.name
                rendered += 1
    assert rendered > 100


def test_tfds_task_through_seqio_under_mock_data(flan_env):
    with tfds.testing.mock_data(num_examples=3):
        out = texts(
            seqio.get_mixture_or_task("muffin_rte_zs_opt").get_dataset(
                LENGTHS, split="train", shuffle=False
            )
        )
    assert len(out) == 3
    for inputs, target in out:
        # The answer, or in a labelled list the marker before it.
        assert target in ("yes", "no") or f"{target} yes" in inputs or f"{target} no" in inputs


def test_winogrande_splits_the_sentence_at_its_blank_as_flan_does(flan_env):
    """FLAN's winogrande: the context is the sentence up to "_", and each option carries the
    rest of the sentence, so the prompt never shows the blank."""
    task = registry.REGISTERED["muffin"]["winogrande"]
    raw = {
        "sentence": tf.constant("The trophy doesn't fit into the suitcase because the _ is big."),
        "option1": tf.constant("trophy"),
        "option2": tf.constant("suitcase"),
        "label": tf.constant(0, tf.int64),
    }
    fields = task.to_fields(raw)
    assert fields["context"].numpy() == b"The trophy doesn't fit into the suitcase because the "
    assert fields["options"].numpy().tolist() == [b"trophy is big.", b"suitcase is big."]
    assert fields["answer"].numpy() == b"trophy is big."
    for template in task.templates:
        inputs, targets = (text.numpy().decode() for text in template.render(fields))
        assert "_" not in inputs and "- suitcase is big." in inputs
        assert targets == "trophy is big."


def _golden_task(family="muffin", task_templates=muffin.NLI[:2]):
    rows = [
        {
            "premise": f"Premise {i}.",
            "hypothesis": f"Hypothesis {i}.",
            "answer": ["yes", "no"][i % 2],
        }
        for i in range(6)
    ]

    def dataset_fn(split, shuffle_files, seed=None):
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        columns["options"] = [["yes", "no"]] * len(rows)
        return tf.data.Dataset.from_tensor_slices(columns)

    source = seqio.FunctionDataSource(
        dataset_fn, splits=("train",), num_input_examples={"train": 6}
    )
    task = registry.FlanTask("golden_nli", family, source, task_templates)
    registry.register(task)
    return task


@pytest.fixture
def plain_options():
    """Deterministic OPTIONS:/- lists, as the golden prompts below expect."""
    gin.clear_config()
    with gin.unlock_config():
        gin.parse_config(
            "from __gin__ import dynamic_registration\nfrom tasks.flan import registry\n"
            "registry.format_settings.randomize_options = False\n"
            "registry.format_settings.few_shot_k = 1\n"
            "registry.format_settings.max_input_tokens = None"
        )
    yield
    gin.clear_config()


def test_golden_prompts_of_each_format(flan_env, plain_options):
    task = _golden_task()
    try:
        rendered = {
            fmt: texts(
                seqio.get_mixture_or_task(task.variant(fmt)).get_dataset(
                    LENGTHS, split="train", shuffle=False
                ),
                2,
            )
            for fmt in task.formats
        }
    finally:
        registry.unregister_family("muffin")
        muffin.register()
    assert rendered["zs_opt"][0] == (
        'Premise 0.\n\nBased on the paragraph above, can we conclude that "Hypothesis 0."?\n\n'
        "OPTIONS:\n- yes\n- no",
        "yes",
    )
    assert rendered["zs_opt"][1] == (
        "Premise: Premise 1.\nHypothesis: Hypothesis 1.\nDoes the premise entail the hypothesis?\n"
        "OPTIONS:\n- yes\n- no",
        "no",
    )
    assert rendered["zs_noopt"][0] == (
        'Premise 0.\n\nBased on the paragraph above, can we conclude that "Hypothesis 0."?',
        "yes",
    )
    # fs_noopt is the x-shot variant alone: example 0 drew no exemplar (Binomial(25, 0.1)
    # is 0 for 7% of queries) and is dropped, so the first prompt is example 1, template 1
    # (Input:/Output: delimiters).
    fs_inputs, fs_target = rendered["fs_noopt"][0]
    exemplar, query = fs_inputs.rsplit("\n\nInput: ", 1)
    assert exemplar.startswith("Input: Premise: Premise ") and "\nOutput: " in exemplar
    assert (
        query == "Premise: Premise 1.\nHypothesis: Hypothesis 1.\n"
        "Does the premise entail the hypothesis?\nOutput:"
    )
    assert fs_target == "no"
    # fs_opt example 0: the mixed-template variant, one exemplar (few_shot_k = 1) in its own
    # template, then the task's separator and the query.
    fs_opt_inputs, _ = rendered["fs_opt"][0]
    separator = registry.mixed_separator(task, seed=0)
    exemplar, query = fs_opt_inputs.rsplit(separator + "Q: Premise 0.", 1)
    assert exemplar.startswith(("Q: Premise ", "Input: Premise: Premise "))
    assert exemplar.endswith("OPTIONS:\n- yes\n- no\nA: yes") or exemplar.endswith(
        "OPTIONS:\n- yes\n- no\nOutput: no"
    )
    assert query == (
        '\n\nBased on the paragraph above, can we conclude that "Hypothesis 0."?\n\n'
        "OPTIONS:\n- yes\n- no\nA:"
    )


def test_golden_chain_of_thought_prompts(flan_env, plain_options):
    zero_shot = texts(
        seqio.get_mixture_or_task("cot_gsm8k_zs_cot").get_dataset(
            LENGTHS, split="train", shuffle=False
        ),
        2,
    )
    assert zero_shot[0] == (
        "Mia has 3 apples and buys 4 more. How many apples does she have?\n"
        "Let's think step by step.",
        "Mia starts with 3 apples. 3 + 4 = 7. So the answer is 7.",
    )
    assert zero_shot[1][0] == (
        "Mia has 3 apples and buys 4 more. How many apples does she have? (variant 1) "
        "Reason it through before answering."
    )
    # Examples 0-4 take the mixed variant, 5-9 the x-shot one: example 5 has template 0 and
    # drew 3 exemplars (each of 25 candidates kept with probability 0.1), other rows of the
    # six rendered in its template, with Q:/A: delimiters.
    few_shot, target = texts(
        seqio.get_mixture_or_task("cot_gsm8k_fs_cot").get_dataset(
            LENGTHS, split="train", shuffle=False
        ),
        6,
    )[5]
    *exemplars, query = few_shot.split("\n\n")
    drawn = registry.flan_few_shot_variants(
        registry.REGISTERED["cot"]["gsm8k"], "fs_cot", registry.current_settings()
    )[1]
    assert len(exemplars) == templates.kept_count(drawn, tf.constant(5, tf.int64), 0) == 3
    for exemplar in exemplars:
        assert (
            exemplar.startswith("Q: Mia has 3 apples")
            and "\nA: Let's think step by step. Mia starts with 3 apples." in exemplar
        )
        assert exemplar.endswith("So the answer is 7.")
        assert "(variant 5)" not in exemplar
    assert query == (
        "Q: Mia has 3 apples and buys 4 more. How many apples does she have? (variant 5)\nA:"
    )
    assert target == (
        "Let's think step by step. Mia starts with 3 apples. 3 + 4 = 7. Variant 5 changes "
        "nothing. So the answer is 7."
    )


def _examples(name, limit=None):
    dataset = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split="train", shuffle=False)
    return list((dataset.take(limit) if limit else dataset).as_numpy_iterator())


def test_niv2_prompts_carry_definition_and_metadata(flan_env):
    examples = _examples("niv2_task002_plural_generation_zs_noopt")
    assert len(examples) == 6
    first = examples[0]
    assert first["inputs_pretokenized"].decode() == (
        "Definition: Write the plural of the given English noun.\n\nInput: cat\nOutput:"
    )
    assert first["targets_pretokenized"].decode() == "cats"
    assert first[registry.TASK_FEATURE].decode() == "task002_plural_generation"
    assert first[registry.FORMAT_FEATURE].decode() == "zs_noopt"
    assert [ex[templates.TEMPLATE_INDEX] for ex in examples] == [0, 1, 2, 3, 0, 1]


def test_few_shot_exemplars_never_equal_their_example(flan_env):
    """The fixtures' examples are told apart by a marker: it shows once, in the query."""
    countries = ["France", "Japan", "Kenya", "Peru", "Norway", "Egypt"]
    for index, example in enumerate(_examples("niv2_task001_capitals_answer_generation_fs_noopt")):
        inputs = example["inputs_pretokenized"].decode()
        shown = sum(inputs.count(f"{c}\n") for c in countries)
        if index >= len(niv2.INLINE_TEMPLATES):  # two other instances, then the query
            assert inputs.count(f"{countries[index]}\n") == 1, inputs
            assert shown == 3
        else:  # the positive example (France, explained), then the query
            assert "fixture" in inputs and shown == 2
    for example in _examples("cot_qasc_fs_cot"):
        target = example["targets_pretokenized"].decode()
        if "Variant " in target:
            variant = target.split("Variant ")[1].split(" ")[0]
            assert example["inputs_pretokenized"].decode().count(f"(variant {variant})") == 1


def test_few_shot_prompts_fit_the_token_budget(flan_env):
    vocabulary = registry.output_features()["inputs"].vocabulary
    budget = 300
    gin.clear_config()
    with gin.unlock_config():
        gin.parse_config(
            "from __gin__ import dynamic_registration\nfrom tasks.flan import registry\n"
            f"registry.format_settings.max_input_tokens = {budget}"
        )
    try:
        pruned = _examples("cot_esnli_fs_cot")
    finally:
        gin.clear_config()
    full = {ex["targets_pretokenized"]: ex for ex in _examples("cot_esnli_fs_cot")}
    assert pruned
    pruned_shots = []
    for short in pruned:
        text = short["inputs_pretokenized"].decode()
        long = full[short["targets_pretokenized"]]["inputs_pretokenized"].decode()
        assert len(vocabulary.encode(text)) <= budget
        shots = text.count('Premise: "A dog')  # once per exemplar and in the query
        assert 2 <= shots <= long.count('Premise: "A dog')  # a query keeps >= 1 exemplar
        pruned_shots.append((shots, long.count('Premise: "A dog')))
    assert any(shots < before for shots, before in pruned_shots)  # the budget pruned


def _golden_texts(fmt):
    task = _golden_task()
    try:
        return task, texts(
            seqio.get_mixture_or_task(task.variant(fmt)).get_dataset(
                LENGTHS, split="train", shuffle=False
            )
        )
    finally:
        registry.unregister_family("muffin")
        muffin.register()


def test_randomized_options_vary_and_stay_deterministic(flan_env):
    _, first = _golden_texts("zs_opt")
    _, again = _golden_texts("zs_opt")
    assert first == again
    lists = set()
    for index, (inputs, target) in enumerate(first):
        answer = ["yes", "no"][index % 2]
        # A lettered or numbered list answers with the marker of the right option.
        assert target == answer or f"{target} {answer}" in inputs
        lists.add(inputs.split("?", 1)[1])
    assert len(lists) >= 2


def test_few_shot_lists_options_in_the_plain_form(flan_env):
    """Randomized option lists are for zero-shot prompts only (FLAN's rule): every exemplar
    and query of a few-shot prompt lists them as OPTIONS:/- ."""
    _, few_shot = _golden_texts("fs_opt")
    assert few_shot
    for inputs, _ in few_shot:
        blocks = inputs.count("Hypothesis ")  # once in each exemplar and the query
        assert blocks >= 2 and inputs.count("OPTIONS:\n- yes\n- no") == blocks, inputs


def test_mixed_variant_separator_is_one_per_task(flan_env):
    tasks = list(registry.REGISTERED["muffin"].values())
    separators = [registry.mixed_separator(task, seed=0) for task in tasks]
    assert set(separators) == set(registry.MIXED_SEPARATORS)  # drawn per task
    assert separators == [registry.mixed_separator(task, seed=0) for task in tasks]
    assert separators != [registry.mixed_separator(task, seed=1) for task in tasks]


def test_niv2_few_shot_rules(flan_env):
    """Examples 0-3: the inline rule (definition, the positive example with its explanation,
    the query); 4-7: the definition once, two other instances, the query."""
    plurals = {"cat": "cats", "box": "boxes", "child": "children", "mouse": "mice"}
    plurals |= {"city": "cities", "leaf": "leaves"}
    out = [
        (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
        for ex in _examples("niv2_task002_plural_generation_fs_noopt")
    ]
    definition = "Write the plural of the given English noun."
    assert out[0] == (
        f"{definition}\n\nExample input: cat\nExample output: cats\nWhy: fixture\n\n"
        "Now this input: cat\nOutput:",
        "cats",
    )
    assert out[1] == (
        f"Task: {definition}\nHere is a solved example.\nInput: cat\nOutput: cats\n"
        "Explanation: fixture\n\nInput: box\nOutput:",
        "boxes",
    )
    for (inputs, target), header, prefixes, noun in [
        (out[4], f"{definition}\n---\n", ("Example input: ", "\nExample output: "), "city"),
        (out[5], f"Definition: {definition}\n\n", ("Input: ", "\nOutput: "), "leaf"),
    ]:
        assert inputs.startswith(header) and inputs.count(definition) == 1
        *exemplars, query = inputs.removeprefix(header).split("\n\n")
        assert query == prefixes[0] + noun + prefixes[1].rstrip(" ") and len(exemplars) == 2
        for exemplar in exemplars:
            shown, plural = exemplar.removeprefix(prefixes[0]).split(prefixes[1])
            assert plurals[shown] == plural and shown != noun
        assert target == plurals[noun]


def test_niv2_task_without_positive_examples_uses_the_exemplar_rule(tmp_path):
    original = json.load(open(f"{NIV2_DIR}/tasks/task002_plural_generation.json"))
    del original["Positive Examples"]
    path = tmp_path / "task900_no_positives.json"
    path.write_text(json.dumps(original))
    assert sources.niv2_positive_examples(str(path)) == ()
    (variant,) = niv2.few_shot_variants(None, "fs_noopt", {}, path=str(path))
    assert variant.shots == niv2.EXEMPLAR_SHOTS == 2


def test_rendering_version_is_part_of_the_cache_fingerprint(flan_env):
    from flan_jax import task_cache

    task = seqio.get_mixture_or_task("niv2_task002_plural_generation_fs_noopt")
    preprocessors = task_cache.fingerprint(task, LENGTHS)["preprocessors"]
    assert any(f'"rendering": {registry.RENDERING_VERSION}' in p for p in preprocessors)


def test_t0sf_tasks_are_prompted_dataset_variants():
    assert len(t0sf.TASK_NAMES) >= 20
    datasets = {task.source for task in registry.REGISTERED["t0sf"].values()}
    assert len(datasets) < len(registry.REGISTERED["t0sf"])  # several prompts per dataset
