import dataclasses

import jax
import numpy as np
import pytest
import seqio
from train_testing import make_trainer

import tasks.demo  # noqa: F401  (registers the demo tasks)
from flan_jax import evaluation, predict


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
