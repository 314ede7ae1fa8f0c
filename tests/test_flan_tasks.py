"""The Flan tasks: registration over the real sources, every format's rendering (golden),
few-shot exemplars and their token budget, metadata, determinism."""

import gin
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from flan_testing import LENGTHS, texts

from tasks import templates
from tasks.flan import muffin, registry, t0sf


def test_registers_the_four_families_in_their_formats(flan_env):
    assert len(registry.REGISTERED["muffin"]) >= 20
    assert len(registry.REGISTERED["t0sf"]) >= 20
    assert sorted(registry.REGISTERED["cot"]) == sorted(flan_env.cot.DATASETS)
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
        header = inputs.rsplit("\n", 3)[-3]
        assert header in {f.header for f in templates.RANDOM_OPTIONS_FORMATS}
        assert target in ("yes", "no", "A", "B", "1", "2")


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
    fs_inputs, fs_target = rendered["fs_noopt"][1]  # template 1: Input:/Output: delimiters
    exemplar, query = fs_inputs.rsplit("\n\nInput: ", 1)
    assert exemplar.startswith("Input: Premise: Premise ") and "\nOutput: " in exemplar
    assert (
        query == "Premise: Premise 1.\nHypothesis: Hypothesis 1.\n"
        "Does the premise entail the hypothesis?\nOutput:"
    )
    assert fs_target == "no"
    fs_opt_inputs, _ = rendered["fs_opt"][0]
    assert fs_opt_inputs.startswith("Q: Premise ") and fs_opt_inputs.endswith(
        'Q: Premise 0.\n\nBased on the paragraph above, can we conclude that "Hypothesis 0."?\n\n'
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
        "Answer the following question.\n"
        "Mia has 3 apples and buys 4 more. How many apples does she have? (variant 1)\n"
        "Let's think step by step."
    )
    ((few_shot, target),) = texts(
        seqio.get_mixture_or_task("cot_gsm8k_fs_cot").get_dataset(
            LENGTHS, split="train", shuffle=False
        ),
        1,
    )
    exemplar, query = few_shot.split("\n\n")
    assert (
        exemplar.startswith("Q: Mia has 3 apples")
        and "\nLet's think step by step.\nA: Mia starts with 3 apples." in exemplar
    )
    assert exemplar.endswith("So the answer is 7.")
    assert (
        query == "Q: Mia has 3 apples and buys 4 more. How many apples does she have?\n"
        "Let's think step by step.\nA:"
    )
    assert target == "Mia starts with 3 apples. 3 + 4 = 7. So the answer is 7."


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
        assert inputs.count(f"{countries[index]}\n") == 1, inputs
        assert sum(inputs.count(f"{c}\n") for c in countries) == 4  # 3 exemplars + the query
    for index, example in enumerate(_examples("cot_qasc_fs_cot")):
        if index:
            assert example["inputs_pretokenized"].decode().count(f"(variant {index})") == 1


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
    full = _examples("cot_esnli_fs_cot")
    pruned_shots = []
    for short, long in zip(pruned, full):
        text = short["inputs_pretokenized"].decode()
        assert len(vocabulary.encode(text)) <= budget
        assert len(vocabulary.encode(long["inputs_pretokenized"].decode())) > budget
        shots = text.count('Premise: "A dog')  # once per exemplar and in the query
        assert 1 <= shots < long["inputs_pretokenized"].decode().count('Premise: "A dog')
        pruned_shots.append(shots - 1)
        assert short["targets_pretokenized"] == long["targets_pretokenized"]
    assert max(pruned_shots) >= 1  # the budget keeps the exemplars that fit, not none


def test_randomized_options_vary_and_stay_deterministic(flan_env):
    task = _golden_task()
    try:
        first = texts(
            seqio.get_mixture_or_task(task.variant("zs_opt")).get_dataset(
                LENGTHS, split="train", shuffle=False
            )
        )
        again = texts(
            seqio.get_mixture_or_task(task.variant("zs_opt")).get_dataset(
                LENGTHS, split="train", shuffle=False
            )
        )
    finally:
        registry.unregister_family("muffin")
        muffin.register()
    assert first == again
    formats = {f.header: f for f in templates.RANDOM_OPTIONS_FORMATS}
    used = set()
    for index, (inputs, target) in enumerate(first):
        fmt = formats[inputs.split("\n")[-3]]
        used.add(fmt)
        answer = ["yes", "no"][index % 2]
        # Lettered or numbered lists answer with the label of the right option.
        assert target == (fmt.labels[index % 2] if fmt.labels else answer)
        assert inputs.endswith(fmt.bullet.format(*fmt.labels[1:2]) + "no")
    assert len(used) >= 2


def test_t0sf_tasks_are_prompted_dataset_variants():
    assert len(t0sf.TASK_NAMES) >= 20
    datasets = {task.source for task in registry.REGISTERED["t0sf"].values()}
    assert len(datasets) < len(registry.REGISTERED["t0sf"])  # several prompts per dataset
