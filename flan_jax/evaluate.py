"""The paper's benchmark suites on a checkpoint or a Hugging Face directory (gin-configured):

  python -m flan_jax.evaluate --gin_file=gin/eval/evaluate.gin \
    --gin.CHECKPOINT_PATH="'runs/my_run'" --gin.OUTPUT_DIR="'eval/my_run'"
  python -m flan_jax.evaluate --gin_file=gin/eval/evaluate.gin \
    --gin.HF_DIR="'flan-t5-base'" --gin.OUTPUT_DIR="'eval/flan-t5-base'"

Decodes every chosen suite (batched, sharded over all devices and hosts, with a progress line
and ETA on stderr), scores it with the tasks' own metrics, and writes OUTPUT_DIR/results.json,
results.md (the paper's six columns and normalized average beside its rows), results.png and
predictions/{suite}.jsonl (each example's prompt, target and generated text).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys
from typing import Mapping, Sequence

import gin
import jax

import tasks.eval
from flan_jax import evaluation, gin_utils, infer, partitioning, report
from tasks import vocab


def _vocabulary_path(
    vocabulary_path: str | None, checkpoint_path: str | None, model_gin_file: str | None
) -> str | None:
    """The SentencePiece model to evaluate with: VOCABULARY_PATH if set; for an HF directory
    its own spiece.model (None here: infer.load_model takes it); for a checkpoint its model
    gin's VOCABULARY_PATH (an HF import's), else $FLAN_JAX_VOCAB."""
    if vocabulary_path or checkpoint_path is None:
        return vocabulary_path
    _, from_gin = gin_utils.load_model(
        model_gin_file or gin_utils.model_gin_for_checkpoint(checkpoint_path)
    )
    return from_gin or os.environ.get(vocab.FLAN_VOCAB_ENV)


def evaluate(
    *,
    output_dir: str,
    suite_feature_lengths: Mapping[str, Mapping[str, int]],
    partitioner: partitioning.Partitioner,
    checkpoint_path: str | None = None,
    hf_dir: str | None = None,
    model_gin_file: str | None = None,
    vocabulary_path: str | None = None,
    suites: Sequence[str] = tasks.eval.SUITES,
    subtasks: Mapping[str, Sequence[str]] | None = None,
    data_dirs: Mapping[str, str | None] | None = None,
    batch_size: int = 32,
    split: str = "test",
    num_examples: int | None = None,
    self_consistency_suites: Sequence[str] = ("mmlu_cot", "bbh_cot", "mgsm"),
    num_samples: int = 1,
    temperature: float = 0.7,
    seed: int = 0,
    label: str | None = None,
) -> dict:
    """Evaluates and writes the report; returns {suite: {task: {metric: value}}}.

    `data_dirs` ({"mmlu": path, ...}) override the FLAN_JAX_*_DIR variables; `num_samples`
    > 1 turns on self-consistency (sampling at `temperature`, majority vote) for
    `self_consistency_suites`.
    """
    for benchmark, path in (data_dirs or {}).items():
        if benchmark not in tasks.eval.DATA_DIR_ENVS:
            raise ValueError(
                f"data_dirs key {benchmark!r} is not a benchmark; use one of "
                f"{', '.join(tasks.eval.DATA_DIR_ENVS)}"
            )
        if path:
            os.environ[tasks.eval.DATA_DIR_ENVS[benchmark]] = path
    output_dir = os.path.abspath(output_dir)
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "config.gin"), "w") as f:
            f.write(gin.config_str())
    # Loading the model parses its own gin file: everything above read gin first.
    model, params, vocabulary = infer.load_model(
        checkpoint=checkpoint_path,
        hf_dir=hf_dir,
        gin_file=model_gin_file,
        vocabulary=_vocabulary_path(vocabulary_path, checkpoint_path, model_gin_file),
        partitioner=partitioner,
    )
    tasks.eval.register_suites(suites, subtasks, vocabulary)
    evaluator = evaluation.SuiteEvaluator(
        suites,
        suite_feature_lengths,
        model,
        partitioner,
        jax.tree.map(lambda x: x.sharding, params),
        batch_size=batch_size,
        split=split,
        num_examples=num_examples,
        self_consistency_suites=self_consistency_suites,
        num_samples=num_samples,
        temperature=temperature,
        seed=seed,
        show_progress=True,
    )
    results = evaluator.evaluate(params)
    if jax.process_index() == 0:
        label = label or os.path.basename(os.path.normpath(checkpoint_path or hf_dir))
        details = {
            "checkpoint": checkpoint_path,
            "hf_dir": hf_dir,
            "split": split,
            "num_examples_per_task": num_examples,
            "self_consistency": {
                "suites": [s for s in suites if s in self_consistency_suites and num_samples > 1],
                "num_samples": num_samples,
                "temperature": temperature,
            },
        }
        paths = report.write_report(output_dir, label, results, details)
        paths["predictions"] = report.write_predictions(output_dir, evaluator.predictions())
        scores = {suite: report.suite_score(metrics) for suite, metrics in results.items()}
        print(report.markdown_table(label, scores), flush=True)
        print(f"wrote {', '.join(paths.values())}", flush=True)
    return results


def main(argv=None) -> None:
    gin_utils.parse(sys.argv[1:] if argv is None else argv, description=__doc__)
    gin.get_configurable(evaluate)()


if __name__ == "__main__":
    # Gin binds `flan_jax.evaluate.evaluate`; run that module's copy, not this `__main__` one.
    from flan_jax import evaluate as evaluate_module

    evaluate_module.main()
