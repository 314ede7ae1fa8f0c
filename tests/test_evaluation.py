import dataclasses

import jax
import pytest

import tasks.demo  # noqa: F401  (registers the demo tasks)
from flan_jax import evaluation
from test_trainer import make_trainer


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
