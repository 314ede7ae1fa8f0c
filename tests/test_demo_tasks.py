"""The demo tasks and mixture: registration, determinism, splits, vocabulary, metrics, packing."""

import importlib

import numpy as np
import pytest
import sentencepiece as spm
import seqio

import tasks.demo as demo
from tasks import metrics, vocab

LENGTHS = {"inputs": 128, "targets": 64}


def _examples(name, split):
    dataset = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
    return list(dataset.as_numpy_iterator())


def _texts(name, split):
    return [
        (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
        for ex in _examples(name, split)
    ]


def test_tasks_and_mixture_are_registered():
    assert len(demo.TASK_NAMES) >= 4
    mixture = seqio.get_mixture_or_task(demo.MIXTURE_NAME)
    assert sorted(task.name for task in mixture.tasks) == sorted(demo.TASK_NAMES)
    for name in demo.TASK_NAMES:
        task = seqio.get_mixture_or_task(name)
        assert set(task.splits) == {"train", "validation"}
        assert task.metric_fns == [metrics.accuracy]
        for feature in task.output_features.values():
            assert feature.add_eos and feature.vocabulary.vocab_size == 512


def test_reimport_reregisters_without_error():
    importlib.reload(demo)
    assert set(demo.TASK_NAMES) <= set(seqio.TaskRegistry.names())


@pytest.mark.parametrize("name", demo.TASK_NAMES)
def test_validation_data_is_deterministic_and_sized(name):
    first = _texts(name, "validation")
    assert len(first) == demo.SPLIT_SIZES["validation"]
    assert first == _texts(name, "validation")
    assert all(inputs and targets for inputs, targets in first)


@pytest.mark.parametrize("name", ["demo_arithmetic_cot", "demo_sort", "demo_compare_options"])
def test_validation_is_disjoint_from_train(name):
    train = _texts(name, "train")
    assert len(train) == demo.SPLIT_SIZES["train"]
    assert not {i for i, _ in train} & {i for i, _ in _texts(name, "validation")}


def test_arithmetic_targets_are_rationale_then_single_digit_answer():
    task = seqio.get_mixture_or_task("demo_arithmetic_cot")
    for inputs, targets in _texts("demo_arithmetic_cot", "validation"):
        assert inputs.endswith("\nLet's think step by step.")
        answer = task.postprocess_fn(targets, is_target=True)
        assert answer.isdigit() and len(answer) == 1
        assert targets.endswith(f"= {answer}. So the answer is {answer}.")


def test_sort_targets_are_sorted_inputs():
    for inputs, targets in _texts("demo_sort", "validation"):
        digits = [token for token in inputs.split() if token.isdigit()]
        assert 3 <= len(digits) <= 5
        assert targets == " ".join(sorted(digits))


def test_compare_has_options_and_balanced_answers():
    answers = []
    for inputs, targets in _texts("demo_compare_options", "validation"):
        assert "\nOPTIONS:\n- yes\n- no" in inputs or "\nOPTIONS:\n- no\n- yes" in inputs
        answers.append(targets)
    assert set(answers) == {"yes", "no"}
    assert 0.3 < answers.count("yes") / len(answers) < 0.7


def test_antonym_prompts_have_three_exemplars_and_not_the_query():
    for inputs, targets in _texts("demo_antonyms_fewshot", "validation"):
        *exemplars, query = inputs.split("\n\n")
        assert len(exemplars) == 3
        assert query.startswith("Q: ") and query.endswith("\nA:")
        question = query.removeprefix("Q: ").removesuffix("\nA:")
        for exemplar in exemplars:
            exemplar_question, exemplar_answer = exemplar.removeprefix("Q: ").split("\nA: ")
            assert exemplar_question != question and exemplar_answer
        assert targets and " " not in targets


def test_accuracy_is_exact_match_percentage():
    assert metrics.accuracy(["a", "b", "c", "d"], ["a", "x", "c", "D"]) == {"accuracy": 50.0}
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        metrics.accuracy(["a", "b", "c"], ["a", "b"])


def test_demo_vocabulary_round_trips_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(vocab.CACHE_DIR_ENV, str(tmp_path))
    trainings = []
    real_train = spm.SentencePieceTrainer.train

    def counting_train(*args, **kwargs):
        trainings.append(kwargs)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", counting_train)
    first = demo.vocabulary()
    second = demo.vocabulary()
    assert len(trainings) == 1
    assert first.sentencepiece_model_file == second.sentencepiece_model_file
    assert [path.name for path in tmp_path.iterdir()] == [
        first.sentencepiece_model_file.rsplit("/", 1)[-1]
    ]
    assert (first.vocab_size, first.pad_id, first.eos_id, first.unk_id) == (512, 0, 1, 2)
    assert first.tokenizer.bos_id() == -1
    text = "Tom has 3 apples and gets 4 more. So the answer is 7."
    ids = first.encode(text)
    assert ids and max(ids) < 512 and first.unk_id not in ids
    assert first.decode(ids) == text
    for word in ("apples", "answer", "opposite", "OPTIONS"):  # words are pieces, not letters
        assert first.tokenizer.encode(word, out_type=str) == ["\u2581" + word]


def test_vocabulary_training_is_deterministic(tmp_path, monkeypatch):
    lines = [f"the cat number {i} sat on the mat" for i in range(200)]
    models = []
    for directory in ("a", "b"):
        monkeypatch.setenv(vocab.CACHE_DIR_ENV, str(tmp_path / directory))
        path = vocab.sentencepiece_vocabulary(lines, "t", 64).sentencepiece_model_file
        models.append(open(path, "rb").read())
    assert models[0] == models[1]
    monkeypatch.setenv(vocab.CACHE_DIR_ENV, str(tmp_path / "a"))
    other = vocab.sentencepiece_vocabulary(lines[:100], "t", 64).sentencepiece_model_file
    assert len(list((tmp_path / "a").iterdir())) == 2 and open(other, "rb").read() != models[0]


def test_the_moved_demo_vocabulary_names_its_new_home():
    with pytest.raises(AttributeError, match=r"now tasks\.demo\.vocabulary\(\)"):
        vocab.demo_vocabulary()
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        vocab.no_such_name  # noqa: B018 (the lookup is what is tested)


def _segments(segment_ids):
    return [np.flatnonzero(segment_ids == s) for s in range(1, segment_ids.max() + 1)]


def test_packed_mixture_batches_are_consistent():
    dataset = seqio.get_mixture_or_task(demo.MIXTURE_NAME).get_dataset(
        LENGTHS, split="validation", shuffle=False, num_epochs=1
    )
    packed = seqio.EncDecFeatureConverter(pack=True)(dataset, LENGTHS)
    pairs = {
        (tuple(ex["inputs"]), tuple(ex["targets"]))
        for name in demo.TASK_NAMES
        for ex in _examples(name, "validation")
    }
    rows = list(packed.take(12).as_numpy_iterator())
    assert max(row["encoder_segment_ids"].max() for row in rows) >= 2  # really packs
    for row in rows:
        for side, tokens_key in (
            ("encoder", "encoder_input_tokens"),
            ("decoder", "decoder_target_tokens"),
        ):
            tokens, ids = row[tokens_key], row[f"{side}_segment_ids"]
            positions = row[f"{side}_positions"]
            real = tokens != 0
            used = int(real.sum())
            assert real[:used].all() and not real[used:].any()  # padding only at the end
            assert (ids[used:] == 0).all() and (positions[used:] == 0).all()
            assert (np.diff(ids[:used]) >= 0).all() and ids[0] == 1
            assert set(np.unique(ids[:used])) == set(range(1, ids.max() + 1))
            for segment in _segments(ids):
                assert (positions[segment] == np.arange(len(segment))).all()
                assert tokens[segment[-1]] == 1  # each segment ends with EOS
        targets = row["decoder_target_tokens"]
        np.testing.assert_array_equal(row["decoder_loss_weights"], (targets != 0).astype(int))
        decoder_inputs = row["decoder_input_tokens"]
        assert (decoder_inputs[targets == 0] == 0).all()
        assert row["encoder_segment_ids"].max() == row["decoder_segment_ids"].max()
        for encoder_segment, decoder_segment in zip(
            _segments(row["encoder_segment_ids"]), _segments(row["decoder_segment_ids"])
        ):
            assert decoder_inputs[decoder_segment[0]] == 0
            np.testing.assert_array_equal(
                decoder_inputs[decoder_segment[1:]], targets[decoder_segment[:-1]]
            )
            inputs = tuple(row["encoder_input_tokens"][encoder_segment])
            assert (inputs, tuple(targets[decoder_segment])) in pairs
