"""The released Flan 2022 collection: small parquet shards written here in exactly the
released layout (several shards a submix, small row groups, tasks spread across them), read
as seqio tasks and mixed at FLAN's and the paper's rates."""

import io
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf

from tasks import demo, vocab
from tasks.flan import mixtures, released

# submix -> (task_name, template_type, rows); names with the '/', ':' of the real ones.
LAYOUT = {
    "flan2021": [
        ("glue/cola:2.0.0", "zs_opt", 9),
        ("glue/cola:2.0.0", "fs_opt", 7),
        ("glue/cola:2.0.0", "zs_noopt", 5),
        ("glue/cola:2.0.0", "fs_noopt", 3),
        ("ag_news_subset:1.0.0", "zs_opt", 4),
        ("ag_news_subset:1.0.0", "fs_noopt", 2),
    ],
    "t0": [
        ("adversarial_qa_dbert_answer_the_following_q", "zs_opt", 6),
        ("adversarial_qa_dbert_answer_the_following_q", "fs_opt", 3),
        ("quartz_answer_question_based_on", "zs_noopt", 4),
    ],
    "niv2": [
        ("task001_quoref_question_generation", "zs_opt", 8),
        ("task001_quoref_question_generation", "fs_opt", 8),
        ("task1234_word-analogy", "zs_opt", 2),
        ("task1234_word-analogy", "fs_opt", 3),
        ("task1234_word-analogy", "zs_noopt", 2),  # not among the types FLAN mixes for NIV2
    ],
    "cot": [("cot_gsm8k", "zs_opt", 5), ("cot_gsm8k", "fs_opt", 4), ("cot_esnli_ii", "zs_opt", 3)],
    "dialog": [("wiki_dialog", "zs_opt", 6), ("qrecc_ii", "fs_opt", 4)],
}
SHARDS = 3
SCHEMA = pa.schema([(column, pa.string()) for column in released.COLUMNS])


def task_name(submix, name, template_type):
    return released.task_names(submix, [(name, template_type)])[(name, template_type)]


def write_shard(path, rows, schema=SCHEMA):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=4)


def write_collection(root, layout=LAYOUT):
    """The rows of each submix, shuffled and cut into SHARDS files in file order."""
    written = {}
    for submix, tasks in layout.items():
        rows = [
            {
                "inputs": f"Question {i} of {name} ({template_type})?",
                "targets": f"answer {i}",
                "task_source": submix,
                "task_name": name,
                "template_type": template_type,
            }
            for name, template_type, count in tasks
            for i in range(count)
        ]
        rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
        data = root / released.folder(submix) / "data"
        data.mkdir(parents=True)
        for number, part in enumerate(np.array_split(np.arange(len(rows)), SHARDS)):
            path = data / f"train-{number:05d}-of-{SHARDS:05d}-0123abcd.parquet"
            write_shard(path, [rows[i] for i in part])
        written[submix] = rows
    return written


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """(directory, rows per submix) with the demo vocabulary as the Flan vocabulary."""
    root = tmp_path_factory.mktemp("released")
    rows = write_collection(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(vocab.FLAN_VOCAB_ENV, demo.vocabulary().sentencepiece_model_file)
        patch.setenv(released.DIR_ENV, str(root))
        yield str(root), rows
    released.register_all()


def shares(mixture, prefix):
    total = mixture.total_rate
    return sum(mixture.get_rate(t) for t in mixture.tasks if t.name.startswith(prefix)) / total


def test_registration_reads_nothing_and_first_use_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv(vocab.FLAN_VOCAB_ENV, demo.vocabulary().sentencepiece_model_file)
    later = tmp_path / "not_yet"
    name = released.register_mixture("test_released_later", {"cot": 1.0}, str(later))
    mixture = seqio.get_mixture_or_task(name)  # Resolving the name reads nothing either.
    with pytest.raises(FileNotFoundError, match=f"{later} does not exist"):
        seqio.get_subtasks(mixture)
    write_collection(later, {"cot": LAYOUT["cot"]})
    assert {t.name for t in seqio.get_subtasks(mixture)} == {
        task_name("cot", n, t) for n, t, _ in LAYOUT["cot"]
    }
    names = released.register_collection(str(later))  # present submixes only: cot
    assert sorted(names) == sorted(t.name for t in mixture.tasks)
    monkeypatch.delenv(released.DIR_ENV, raising=False)
    unset = released.register_mixture("test_released_unset", {"cot": 1.0})
    with pytest.raises(FileNotFoundError, match=released.DIR_ENV):
        seqio.get_subtasks(seqio.get_mixture_or_task(unset))


def test_one_task_per_task_name_and_template_type_with_its_row_count(collection):
    directory, rows = collection
    mixture = seqio.get_mixture_or_task(released.released_mixture("a", directory=directory))
    expected = {task_name(s, n, t): c for s, tasks in LAYOUT.items() for n, t, c in tasks}
    assert {t.name: t.num_input_examples("train") for t in mixture.tasks} == expected
    assert "released_flan2021_glue_cola_2.0.0_zs_opt" in expected
    assert "released_niv2_task1234_word_analogy_zs_noopt" in expected
    index = released.submix_index(directory, "niv2")
    assert len(index.files) == SHARDS
    spread = index.units[("task001_quoref_question_generation", "zs_opt")]
    assert len({number for number, _, _ in spread}) > 1  # the test covers tasks across shards


def test_sanitized_names_stay_unique():
    names = released.task_names("t0", [("a/b", "zs_opt"), ("a:b", "zs_opt"), ("a_b", "zs_opt")])
    assert names[("a_b", "zs_opt")] == "released_t0_a_b_zs_opt"
    assert len(set(names.values())) == 3
    assert all(name.startswith("released_t0_a_b_") for name in names.values())


def test_get_dataset_yields_the_vocabulary_encoding_plus_eos(collection):
    directory, rows = collection
    released.register_collection(directory)
    name, template_type = "glue/cola:2.0.0", "zs_opt"
    task = seqio.get_mixture_or_task(task_name("flan2021", name, template_type))
    mine = [
        r for r in rows["flan2021"] if (r["task_name"], r["template_type"]) == (name, template_type)
    ]
    vocabulary = vocab.flan_vocabulary()
    for lengths, cut in (({"inputs": 64, "targets": 16}, None), ({"inputs": 4, "targets": 2}, 1)):
        examples = list(
            task.get_dataset(
                lengths, split="train", shuffle=False, num_epochs=1
            ).as_numpy_iterator()
        )
        assert [ex["inputs_pretokenized"].decode() for ex in examples] == [
            r["inputs"] for r in mine
        ]
        for ex, row in zip(examples, mine):
            for feature in ("inputs", "targets"):
                ids = vocabulary.encode(row[feature])[: lengths[feature] - 1 if cut else None]
                assert ex[feature].tolist() == ids + [vocabulary.eos_id]


def test_source_shards_partition_the_rows_whatever_the_order(collection):
    directory, rows = collection
    released.register_collection(directory)
    task = seqio.get_mixture_or_task(
        task_name("niv2", "task001_quoref_question_generation", "fs_opt")
    )
    source = task.source

    def inputs(**kwargs):
        return [
            ex["inputs"].decode()
            for ex in source.get_dataset("train", **kwargs).as_numpy_iterator()
        ]

    whole = inputs(shuffle=False)
    assert len(whole) == 8
    for seed in (1, 2):
        parts = [
            inputs(shuffle=True, seed=seed, shard_info=seqio.ShardInfo(i, 3)) for i in range(3)
        ]
        assert sorted(sum(parts, [])) == sorted(whole)
    assert inputs(shuffle=False, shard_info=seqio.ShardInfo(1, 3)) == whole[1::3]
    assert source.num_input_examples("train") == 8
    with pytest.raises(ValueError, match="only 'train'"):
        source.get_dataset("validation")


def test_read_partitioned_reads_each_row_once_and_rows_to_dataset_matches(collection):
    directory, rows = collection
    released.register_collection(directory)
    task = seqio.get_mixture_or_task(task_name("dialog", "wiki_dialog", "zs_opt"))
    source = task.source
    files = source.shared_files("train")
    assert len(files) == SHARDS and all(f.endswith(".parquet") for f in files)
    read = [pair for path in files for pair in source.read_partitioned(path)]
    assert [row for _, row in read] == rows["dialog"]  # every row once, in file order
    assert {key for key, _ in read} == {task_name("dialog", n, t) for n, t, _ in LAYOUT["dialog"]}
    assert all(key == task_name("dialog", r["task_name"], r["template_type"]) for key, r in read)
    mine = [row for key, row in read if key == source.partition]
    expected = source.get_dataset("train", shuffle=False)
    rebuilt = source.rows_to_dataset(mine)
    assert rebuilt.element_spec == expected.element_spec
    assert list(rebuilt.as_numpy_iterator()) == list(expected.as_numpy_iterator())
    assert source.rows_to_dataset([]).element_spec == expected.element_spec
    copy = pickle.loads(pickle.dumps(source))  # as Beam ships it to its workers
    assert list(copy.read_partitioned(files[0])) == list(source.read_partitioned(files[0]))


def test_read_partitioned_with_keys_yields_only_theirs_in_file_order(collection):
    directory, rows = collection
    released.register_collection(directory)
    keys = {task_name("niv2", "task1234_word-analogy", t) for t in ("zs_opt", "zs_noopt")}
    source = seqio.get_mixture_or_task(next(iter(keys))).source
    read = [
        pair
        for path in source.shared_files("train")
        for pair in source.read_partitioned(path, keys)
    ]
    expected = [
        r for r in rows["niv2"] if task_name("niv2", r["task_name"], r["template_type"]) in keys
    ]
    assert [row for _, row in read] == expected and len(expected) == 4
    assert all(key == task_name("niv2", r["task_name"], r["template_type"]) for key, r in read)
    with pytest.raises(ValueError, match="not tasks of the released niv2"):
        list(source.read_partitioned(source.shared_files("train")[0], {"released_niv2_nope"}))


def test_flan_scheme_weights_submixes_template_types_equally_and_caps_rows(collection, monkeypatch):
    directory, _ = collection
    monkeypatch.setitem(released.CAPS, "niv2", 4)
    name = released.register_mixture("test_released_flan", released.FLAN_WEIGHTS, directory)
    mixture = seqio.get_mixture_or_task(name)
    assert mixture.total_rate == pytest.approx(1.0)
    for submix, weight in released.FLAN_WEIGHTS.items():
        assert shares(mixture, f"released_{submix}_") == pytest.approx(weight)
    rate = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    # Flan 2021 mixes all four template types equally; within one, rows decide.
    for template_type in released.TEMPLATE_TYPES:
        of_type = [
            r
            for n, r in rate.items()
            if n.startswith("released_flan2021_") and n.endswith(template_type)
        ]
        assert sum(of_type) == pytest.approx(0.4 / 4)
    assert rate[task_name("flan2021", "glue/cola:2.0.0", "zs_opt")] == pytest.approx(0.1 * 9 / 13)
    # NIV2 mixes zs_opt and fs_opt (FLAN's niv2_submix); rows capped at 4: 8 -> 4, 2, 3.
    assert task_name("niv2", "task1234_word-analogy", "zs_noopt") not in rate
    assert rate[task_name("niv2", "task001_quoref_question_generation", "zs_opt")] == pytest.approx(
        0.1 * 4 / 6
    )
    assert rate[task_name("niv2", "task1234_word-analogy", "fs_opt")] == pytest.approx(0.1 * 3 / 7)
    # T0's fs_noopt is absent in this data: its three types share T0's weight.
    assert rate[task_name("t0", "quartz_answer_question_based_on", "zs_noopt")] == pytest.approx(
        0.32 / 3
    )


def test_paper_proportions_cap_each_task_within_its_family(collection, monkeypatch):
    directory, _ = collection
    monkeypatch.setitem(released.CAPS, "flan2021", 5)
    monkeypatch.setitem(released.CAPS, "dialog", 100)
    for key in ("a", "b"):
        name = released.released_mixture(key, directory=directory)
        assert name == f"flan2022_released_{key}"
        mixture = seqio.get_mixture_or_task(name)
        proportions = mixtures.PROPORTIONS[key]
        whole = sum(proportions.values())
        muffin = shares(mixture, "released_flan2021_") + shares(mixture, "released_dialog_")
        assert muffin == pytest.approx(proportions["muffin"] / whole)
        assert shares(mixture, "released_t0_") == pytest.approx(proportions["t0sf"] / whole)
        assert shares(mixture, "released_niv2_") == pytest.approx(proportions["niv2"] / whole)
        assert shares(mixture, "released_cot_") == pytest.approx(proportions["cot"] / whole)
        rate = {t.name: mixture.get_rate(t) / mixture.total_rate for t in mixture.tasks}
        # Muffin weights: Flan 2021 rows capped at 5 (9,7,5,3,4,2 -> 5,5,5,3,4,2), Dialog 6, 4.
        muffin_weight = 24 + 10
        cola = rate[task_name("flan2021", "glue/cola:2.0.0", "zs_opt")]
        assert cola == pytest.approx(proportions["muffin"] / whole * 5 / muffin_weight)
        wiki = rate[task_name("dialog", "wiki_dialog", "zs_opt")]
        assert wiki == pytest.approx(proportions["muffin"] / whole * 6 / muffin_weight)
        assert task_name("niv2", "task1234_word-analogy", "zs_noopt") in rate


def test_cot_ratio_and_user_tasks(collection):
    directory, _ = collection
    name = released.released_mixture("b", cot_ratio=0.1, directory=directory)
    assert name == "flan2022_released_b_cot0.1"
    mixture = seqio.get_mixture_or_task(name)
    assert shares(mixture, "released_cot_") == pytest.approx(0.1)
    b = mixtures.PROPORTIONS["b"]
    assert shares(mixture, "released_niv2_") / shares(mixture, "released_t0_") == pytest.approx(
        b["niv2"] / b["t0sf"]
    )
    user = task_name("cot", "cot_gsm8k", "fs_opt")  # Any registered task can be a user task.
    seqio.TaskRegistry.remove("test_released_user")
    seqio.TaskRegistry.add(
        "test_released_user",
        source=seqio.get_mixture_or_task(user).source,
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=seqio.get_mixture_or_task(user).output_features,
    )
    mixtures.add_user_task("test_released_user", 0.2)
    try:
        name = released.released_mixture("released", directory=directory)
    finally:
        mixtures.USER_TASKS.clear()
    assert name == "flan2022_released_with_test_released_user0.2"
    mixture = seqio.get_mixture_or_task(name)
    assert shares(mixture, "test_released_user") == pytest.approx(0.2)
    assert shares(mixture, "released_flan2021_") == pytest.approx(0.4 * 0.8)
    with pytest.raises(ValueError, match="keys must all be submixes"):
        released.released_mixture({"muffin": 0.5, "flan2021": 0.5})


def test_empirical_shares_over_20k_draws_are_within_a_point_of_the_rates(collection):
    directory, _ = collection
    mixture = seqio.get_mixture_or_task(released.released_mixture("b", directory=directory))
    tasks = mixture.tasks
    rates = np.array([mixture.get_rate(t) for t in tasks]) / mixture.total_rate
    # seqio's own mixing: tf.data's sample_from_datasets at the mixture's rates.
    indices = [tf.data.Dataset.from_tensors(i).repeat() for i in range(len(tasks))]
    draws = tf.data.Dataset.sample_from_datasets(indices, weights=rates.tolist(), seed=0)
    counts = np.bincount(next(iter(draws.batch(20_000))).numpy(), minlength=len(tasks))
    assert np.abs(counts / 20_000 - rates).max() < 0.01


def test_errors_name_the_file_and_the_value(collection, tmp_path):
    directory, _ = collection
    good = [{c: "x" for c in released.COLUMNS} | {"template_type": "zs_opt"}]

    def index_of(name, rows, schema=SCHEMA):
        data = tmp_path / name / released.folder("cot") / "data"
        data.mkdir(parents=True)
        write_shard(data / "train-00000-of-00002.parquet", good)
        path = data / "train-00001-of-00002.parquet"
        write_shard(path, rows, schema)
        return str(path), lambda: released.submix_index(str(tmp_path / name), "cot")

    path, build = index_of("unknown", [good[0] | {"template_type": "zs_cot"}])
    with pytest.raises(ValueError, match=f"{path}: unknown template_type 'zs_cot'"):
        build()
    path, build = index_of("empty", [])
    with pytest.raises(ValueError, match=f"{path} is an empty shard"):
        build()
    without = pa.schema([f for f in SCHEMA if f.name != "template_type"])
    path, build = index_of("column", [{c: "x" for c in without.names}], without)
    with pytest.raises(ValueError, match=rf"{path} lacks the column\(s\) \['template_type'\]"):
        build()
    path, build = index_of("garbage", good)
    (
        tmp_path / "garbage" / released.folder("cot") / "data" / "train-00001-of-00002.parquet"
    ).write_text("no")
    with pytest.raises(ValueError, match=f"{path} is not a readable parquet file"):
        build()
    (tmp_path / "bare" / released.folder("cot")).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no shards data/train-"):
        released.submix_index(str(tmp_path / "bare"), "cot")
    partial = released.register_mixture(
        "test_released_partial", {"niv2": 1}, str(tmp_path / "bare")
    )
    with pytest.raises(
        FileNotFoundError,
        match="niv2_submix_original, missing from .*huggingface-cli download --repo-type "
        "dataset DataProvenanceInitiative/niv2_submix_original",
    ):
        seqio.get_subtasks(seqio.get_mixture_or_task(partial))


def test_inspect_mixture_and_gin_select_the_released_mixture(collection, monkeypatch):
    import gin

    from flan_jax import cli, inspect_mixture

    directory, _ = collection
    gin.clear_config()
    try:
        cli.parse_gin(
            ["mixtures/flan2022_released.gin"],
            [f"RELEASED_DIR = '{directory}'", "MIXTURE_PROPORTIONS = {'cot': 1}"],
        )
        name = inspect_mixture.mixture_from_gin()
    finally:
        gin.clear_config()
    assert name == "flan2022_released_cot1"
    out = io.StringIO()
    inspect_mixture.inspect(name, 10, 4, {"inputs": 64, "targets": 16}, 1, 2, out=out)
    text = out.getvalue()
    assert text.startswith(f"{name}: 3 tasks")
    row = next(
        line
        for line in text.splitlines()
        if line.startswith(task_name("cot", "cot_gsm8k", "zs_opt"))
    )
    assert row.split()[1:4] == [f"{0.5 * 5 / 8:.4f}", "100000", "5"]  # rate, CoT's cap, rows
    assert "missing data" not in text


def test_check_inputs_answers_without_reading_a_shard(tmp_path, monkeypatch):
    """A lazy mixture's `check_inputs` (what flan_jax.preflight asks first) looks for each
    submix's shards only: no index is read; an unset or half-fetched directory is named with
    the download commands and the rows to expect."""
    monkeypatch.delenv(released.DIR_ENV, raising=False)
    unset = seqio.get_mixture_or_task(released.register_mixture("test_check_unset", {"cot": 1}))
    with pytest.raises(FileNotFoundError) as error:
        unset.check_inputs()
    assert "huggingface-cli download --repo-type dataset" in str(error.value)
    assert "17.26M rows: flan2021 5.36M, t0 1.65M, niv2 10.07M, cot 0.18M" in str(error.value)
    write_collection(tmp_path, {"cot": LAYOUT["cot"]})
    monkeypatch.setattr(released, "submix_index", lambda *a: pytest.fail("read an index"))
    present = released.register_mixture("test_check_cot", {"cot": 1}, str(tmp_path))
    seqio.get_mixture_or_task(present).check_inputs()
    paper = released.register_mixture("test_check_b", {"muffin": 1, "cot": 1}, str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        seqio.get_mixture_or_task(paper).check_inputs()
    message = str(error.value)
    assert "flan2021_submix_original, dialog_submix_original, missing from" in message
    assert "5.36M rows: flan2021 5.36M, plus dialog" in message
    assert "cot_submix_original --local-dir" not in message
