import dataclasses

import jax
import numpy as np
import pytest
import seqio
from eval_testing import write_benchmarks
from train_testing import make_trainer

import tasks.demo  # registers the demo tasks
import tasks.eval
from flan_jax import evaluation, predict
from tasks.metrics import NUM_QUESTIONS

MMLU_HEADER = "The following are multiple choice questions (with answers) about  anatomy.\n\n"


def test_teacher_forced_metrics_do_not_depend_on_batching(tiny_config):
    trainer = make_trainer(dataclasses.replace(tiny_config, vocab_size=512))
    params = trainer.create_state(jax.random.key(0)).params
    lengths = {"inputs": 32, "targets": 16}

    def evaluate(batch_size):
        return evaluation.TeacherForcedEvaluator(
            "demo_sort", lengths, trainer.model, trainer, batch_size=batch_size, num_examples=10
        ).evaluate(params)["demo_sort"]

    by_8, by_16 = evaluate(8), evaluate(16)  # 10 examples: 2 padded rows vs 6
    assert by_8 == pytest.approx(by_16, rel=1e-6)
    assert 0 < by_8["teacher_forced/loss"] and 0 <= by_8["teacher_forced/token_accuracy"] <= 1


def test_table_puts_evaluations_side_by_side():
    table = evaluation.format_table(
        {"step 0": {"t": {"accuracy": 0.0}}, "step 10": {"t": {"accuracy": 87.5}}}
    )
    assert table.splitlines() == [
        "| task | metric | step 0 | step 10 |",
        "|---|---|---:|---:|",
        "| t | accuracy | 0.0 | 87.5 |",
    ]


@pytest.mark.parametrize(
    "answers, chosen",
    [
        (["12", "7", "7", "12"], 0),  # a tie: the answer sampled first wins
        (["", "5", "3", "5"], 1),  # the majority, at its first sample
        (["", "", "4"], 2),  # nothing extracted is no vote
        (["", ""], 0),
    ],
)
def test_majority_vote(answers, chosen):
    assert evaluation.majority_vote(answers) == chosen


def test_self_consistency_scores_a_sample_with_the_majority_answer():
    task = seqio.get_mixture_or_task("demo_arithmetic_cot")  # postprocessor: "So the answer is"
    vocabulary = task.output_features["targets"].vocabulary
    texts = [
        "3 + 1 = 4. So the answer is 4.",
        "3 - 1 = 2. So the answer is 2.",
        "1 + 1 = 2. So the answer is 2.",
    ]
    samples = np.zeros((3, 32), np.int32)
    for row, text in enumerate(texts):
        ids = vocabulary.encode(text) + [1]
        samples[row, : len(ids)] = ids
    kept = evaluation.PredictionEvaluator._vote(task, samples)
    np.testing.assert_array_equal(kept, samples[1])


def test_self_consistency_needs_sampling(tiny_config):
    trainer = make_trainer(dataclasses.replace(tiny_config, vocab_size=512))
    with pytest.raises(ValueError, match="num_samples=4 needs temperature > 0"):
        evaluation.PredictionEvaluator(
            "demo_sort",
            {"inputs": 32, "targets": 16},
            trainer.model,
            trainer.partitioner,
            trainer.params_shardings,
            batch_size=8,
            num_samples=4,
            temperature=0.0,
        )


def test_beam_search_reaches_the_decode_function(tiny_config):
    trainer = make_trainer(dataclasses.replace(tiny_config, vocab_size=512))
    lengths = {"inputs": 32, "targets": 16}
    suites = evaluation.SuiteEvaluator(
        ["demo_sort", "demo_arithmetic_cot"],
        {"demo_sort": lengths, "demo_arithmetic_cot": lengths},
        trainer.model,
        trainer.partitioner,
        trainer.params_shardings,
        batch_size=8,
        split="validation",
        num_examples=2,
        self_consistency_suites=["demo_arithmetic_cot"],
        num_samples=3,
        temperature=0.5,
        num_beams=2,
    )

    def decode(**settings):
        return predict.predict_function(
            trainer.model,
            trainer.partitioner,
            trainer.params_shardings,
            predict.DecodeSettings(max_decode_length=16, **settings),
        )

    # One compiled function per setting: beams for the greedy suite, samples for the other.
    assert suites._evaluators["demo_sort"]._predict is decode(num_beams=2)
    assert suites._evaluators["demo_arithmetic_cot"]._predict is decode(
        temperature=0.5, num_decodes=3
    )


@pytest.fixture
def mmlu_direct(tmp_path, monkeypatch):
    """MMLU direct on the fixture's anatomy questions, with the demo vocabulary."""
    for env, path in write_benchmarks(tmp_path).items():
        monkeypatch.setenv(env, path)
    vocabulary = tasks.demo.vocabulary()
    tasks.eval.register_suites(["mmlu_direct"], {"mmlu": ["anatomy"]}, vocabulary)
    yield vocabulary
    tasks.eval.register_suites()


def test_mmlu_direct_ranks_the_letters_by_the_models_own_logits(tiny_config, mmlu_direct):
    vocabulary = mmlu_direct
    trainer = make_trainer(dataclasses.replace(tiny_config, vocab_size=512))
    params = trainer.create_state(jax.random.key(0)).params
    evaluator = evaluation.PredictionEvaluator(
        "mmlu_direct",
        {"inputs": 256, "targets": 4},
        trainer.model,
        trainer.partitioner,
        trainer.params_shardings,
        batch_size=8,
        split="test",
    )
    metrics = evaluator.evaluate(params)["mmlu_direct_anatomy"]
    predictions = evaluator.predictions()["mmlu_direct_anatomy"]
    # hendrycks/test's evaluate_flan.py takes the logit of each letter's token at the first
    # decoder position. The demo vocabulary spells "A" as one piece but "B" as "▁" + "B", so a
    # letter's score is the log-likelihood of all its pieces, each at its position.
    letters = [vocabulary.encode(letter) for letter in "ABCD"]
    decoder_tokens = np.zeros((4, 2), np.int32)
    for row, pieces in enumerate(letters):
        decoder_tokens[row, 1 : len(pieces)] = pieces[:-1]
    apply = jax.jit(trainer.model.module.apply)
    chosen = []
    for prediction in predictions:
        encoder_tokens = np.array([vocabulary.encode(prediction["inputs"]) + [1]] * 4, np.int32)
        logits = apply({"params": params}, encoder_tokens, decoder_tokens)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        scores = [
            sum(float(log_probs[row, t, piece]) for t, piece in enumerate(pieces))
            for row, pieces in enumerate(letters)
        ]
        np.testing.assert_allclose(prediction["scores"], scores, atol=1e-4)
        chosen.append("ABCD"[int(np.argmax(scores))])
    assert [p["prediction"] for p in predictions] == chosen
    correct = [c == p["targets"] for c, p in zip(chosen, predictions)]
    assert metrics == {"accuracy": 100 * np.mean(correct), NUM_QUESTIONS: 2.0}


def test_mmlu_direct_drops_whole_exemplars_until_the_prompt_fits(mmlu_direct):
    vocabulary = mmlu_direct
    task = seqio.get_mixture_or_task("mmlu_direct_anatomy")
    query = task.source.get_dataset("test").skip(1).take(1).get_single_element()
    prompts = [p.decode() for p in query["prompts"].numpy()]  # 5, 4, ..., 0 exemplars
    three_shot = len(vocabulary.encode(prompts[2]))
    assert len(vocabulary.encode(prompts[1])) > three_shot
    ds = task.get_dataset({"inputs": three_shot + 1, "targets": 4}, split="test", shuffle=False)
    example = list(ds.as_numpy_iterator())[1]
    assert example["inputs"].tolist() == vocabulary.encode(prompts[2]) + [1]  # EOS kept
    # The first three dev questions stay (evaluate.py lowers k), with the header and the query.
    prompt = example["inputs_pretokenized"].decode()
    assert prompt == prompts[2]
    assert prompt.startswith(MMLU_HEADER + "Dev question 0?")
    assert prompt.count("\nAnswer: ") == 3 and "Dev question 2?" in prompt
    assert "Dev question 3?" not in prompt
    assert prompt.endswith("A. two\nB. three\nC. four\nD. five\nAnswer:")


def test_predictions_that_reach_the_decode_length_without_eos_are_counted(tiny_config):
    """Per task, the scored predictions with no EOS in their decode length: here the model's
    output is replaced by rows that end (EOS) or run to the end, alternately."""
    trainer = make_trainer(dataclasses.replace(tiny_config, vocab_size=512))
    evaluator = evaluation.PredictionEvaluator(
        "demo_sort",
        {"inputs": 32, "targets": 6},
        trainer.model,
        trainer.partitioner,
        trainer.params_shardings,
        batch_size=8,
        num_examples=5,
    )
    rows = np.full((8, 6), 7, np.int32)
    rows[::2, 3], rows[::2, 4:] = 1, 0  # rows 0, 2, 4, 6 end with EOS; 1, 3, 5, 7 are cut
    rows[1, 5] = 1  # EOS as the last token still ends the answer
    evaluator._predict = lambda params, batch, index: rows
    evaluator.evaluate(params=None)
    # Of the 5 examples only row 3 is cut: row 1's EOS is its last token; 5 and 7 are padding.
    assert evaluator.truncated() == {
        "demo_sort": {"truncated": 1, "predictions": 5, "decode_length": 6}
    }
