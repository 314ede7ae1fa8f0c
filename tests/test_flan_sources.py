"""Readers of the Flan data: CoT TSVs, natural-instructions task files and TFDS datasets,
their checks and the errors that say what to fix, and the rows they keep."""

import json
import os
import shutil
import types

import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from flan_testing import COT_DIR, LENGTHS, NIV2_DIR, texts

from tasks.flan import cot, registry, sources


def test_cot_tsv_reads_question_answer_rationale_with_escaped_newlines():
    rows = sources.read_cot_tsv(os.path.join(COT_DIR, "aqua_train.tsv"))
    assert len(rows) == 6
    first = rows[0]
    assert first["question"].startswith("A train travels 60 km in 1.5 hours.")
    assert "\nOptions:\n(A) 30 km/h\n" in first["question"]  # "\\n" in the file is a newline
    assert first["answer"] == "(B)"
    assert first["rationale"] == "Speed is distance over time: 60 / 1.5 = 40 km/h."


def test_every_paper_cot_dataset_has_a_fixture_file_with_flan_names():
    assert sorted(cot.DATASETS) == sorted(
        name.removesuffix("_train.tsv") for name in os.listdir(COT_DIR)
    )
    assert sum(cot.DATASETS.values()) == 74_771  # FLAN's files; the paper reports 74,730


def test_cot_tsv_with_a_bad_row_names_file_and_line(tmp_path):
    path = tmp_path / "gsm8k_train.tsv"
    path.write_text("q1\t1\tr1\nq2\t2\n")
    with pytest.raises(ValueError, match=rf"{path}:2: expected 3 non-empty tab-separated columns"):
        sources.read_cot_tsv(str(path))
    empty = tmp_path / "creak_train.tsv"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=rf"{empty}: no rows"):
        sources.read_cot_tsv(str(empty))


def test_cot_source_without_data_says_which_variable_to_set(tmp_path):
    unset = sources.cot_source("gsm8k", lambda: None)
    with pytest.raises(ValueError, match="set FLAN_JAX_COT_DIR"):
        unset.get_dataset("train")
    assert unset.num_input_examples("train") is None
    elsewhere = sources.cot_source("gsm8k", lambda: str(tmp_path))
    with pytest.raises(ValueError, match=r"gsm8k_train.tsv does not exist"):
        elsewhere.get_dataset("train")
    assert sources.cot_source("gsm8k", lambda: COT_DIR).num_input_examples("train") == 6


def test_niv2_enumerates_tasks_and_drops_the_mmlu_derived_ones():
    files = sources.niv2_task_files(NIV2_DIR)
    assert sorted(files) == [
        "task001_capitals_answer_generation",
        "task002_plural_generation",
        "task003_sum_of_two_numbers",
    ]
    tasks_dir = os.path.join(NIV2_DIR, "tasks")
    # Excluded by name (taskNNN_mmmlu_...) and by a Source naming MMLU's hendrycks_test.
    assert sources.is_mmlu_task(
        os.path.join(tasks_dir, "task700_mmmlu_answer_generation_high_school_mathematics.json")
    )
    assert sources.is_mmlu_task(os.path.join(tasks_dir, "task004_science_quiz.json"))
    assert not sources.is_mmlu_task(os.path.join(tasks_dir, "task002_plural_generation.json"))


def test_niv2_task_reads_definition_and_first_outputs():
    path = os.path.join(NIV2_DIR, "tasks", "task002_plural_generation.json")
    assert sources.niv2_definition(path) == "Write the plural of the given English noun."
    assert list(sources.niv2_instances(path))[2] == {"input": "child", "output": "children"}
    assert sources.niv2_count(path) == 6


def test_niv2_malformed_files_name_file_line_and_fix(tmp_path):
    bad_json = tmp_path / "task010_broken.json"
    bad_json.write_text('{\n  "Definition": ["x"],\n  "Instances": [\n')
    with pytest.raises(ValueError, match=rf"{bad_json}:4: invalid JSON"):
        sources.niv2_count(str(bad_json))
    no_output = tmp_path / "task011_no_output.json"
    no_output.write_text(
        json.dumps({"Definition": ["d"], "Instances": [{"id": "1", "input": "i", "output": []}]})
    )
    with pytest.raises(
        ValueError, match=r"Instances\[0\] needs a string \"input\" and a non-empty"
    ):
        sources.niv2_count(str(no_output))
    no_instances = tmp_path / "task012_empty.json"
    no_instances.write_text(json.dumps({"Definition": ["d"], "Instances": []}))
    with pytest.raises(ValueError, match='no "Instances"'):
        sources.niv2_count(str(no_instances))
    no_definition = tmp_path / "task013_no_definition.json"
    no_definition.write_text('{"Instances": [{"input": "i", "output": ["o"]}],\n"Definition": []}')
    with pytest.raises(ValueError, match=rf'{no_definition}:2: "Definition" must be a non-empty'):
        sources.niv2_definition(str(no_definition))
    # Building the dataset checks the whole file, so training fails before its first step.
    with pytest.raises(ValueError, match=r"Instances\[0\] needs a string"):
        sources.niv2_source(str(no_output)).get_dataset("train")


def test_niv2_directory_errors(tmp_path):
    with pytest.raises(ValueError, match="FLAN_JAX_NIV2_DIR=.* is not a directory"):
        sources.niv2_task_files(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="No taskNNN_"):
        sources.niv2_task_files(str(tmp_path))
    only_mmlu = tmp_path / "tasks"
    only_mmlu.mkdir()
    shutil.copy(
        os.path.join(
            NIV2_DIR, "tasks", "task700_mmmlu_answer_generation_high_school_mathematics.json"
        ),
        only_mmlu,
    )
    with pytest.raises(ValueError, match="No taskNNN_"):
        sources.niv2_task_files(str(tmp_path))


def test_tfds_source_without_prepared_data_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.TFDS_DIR_ENV, str(tmp_path))
    source = sources.tfds_source("glue/rte:2.0.0")
    assert source.num_input_examples("train") is None
    with pytest.raises(
        ValueError,
        match=r"not prepared in .*: build it with `tfds build glue/rte` and point TFDS_DATA_DIR",
    ):
        source.get_dataset("train")


class _FakeBuilder:
    """A prepared TFDS builder with winogrande's real split names, recording the splits read."""

    splits_read: list = []

    def __init__(self, *args, **kwargs):
        sizes = {"train_xs": 160, "train_s": 640, "train_m": 2558, "train_l": 10234}
        sizes |= {"train_xl": 40398, "validation": 1267, "test": 1767}
        self.info = types.SimpleNamespace(
            splits={name: types.SimpleNamespace(num_examples=n) for name, n in sizes.items()}
        )

    def as_dataset(self, split, **kwargs):
        if split not in self.info.splits:
            raise ValueError(f"Unknown split {split!r}")
        self.splits_read.append(split)
        return tf.data.Dataset.from_tensors({"label": tf.constant(0, tf.int64)})


def test_winogrande_trains_on_its_train_xl_split(flan_env, monkeypatch):
    monkeypatch.setattr(sources.tfds, "builder", _FakeBuilder)
    _FakeBuilder.splits_read = []
    source = registry.REGISTERED["muffin"]["winogrande"].source
    assert source.num_input_examples("train") == 40398
    assert source.num_input_examples("validation") == 1267
    source.get_dataset("train")
    assert _FakeBuilder.splits_read == ["train_xl"]


@pytest.mark.parametrize("task", ["snli", "mnli"])
def test_nli_rows_without_a_gold_label_are_dropped(flan_env, task):
    """SNLI and MNLI mark examples whose annotators disagreed with label -1."""
    labels = [0, -1, 2, 1, -1]
    rows = {
        "premise": [f"Premise {i}." for i in range(len(labels))],
        "hypothesis": [f"Hypothesis {i}." for i in range(len(labels))],
        "label": labels,
        "idx": list(range(len(labels))),
    }

    def as_dataset(self, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices(rows)

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        rendered = texts(
            seqio.get_mixture_or_task(f"muffin_{task}_zs_noopt").get_dataset(
                LENGTHS, split="train", shuffle=False
            )
        )
    assert [target for _, target in rendered] == ["yes", "no", "it is not possible to tell"]
    assert all(f"Premise {n}." in inputs for n, (inputs, _) in zip((0, 2, 3), rendered))
