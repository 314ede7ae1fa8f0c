r"""The paper's benchmark suites on a checkpoint or a Hugging Face directory (gin-configured):

  python -m flan_jax.evaluate --gin_file=gin/eval/evaluate.gin \
    --checkpoint=runs/my_run --gin.OUTPUT_DIR="'eval/my_run'"
  python -m flan_jax.evaluate --gin_file=gin/eval/evaluate.gin \
    --checkpoint=flan-t5-base --gin.OUTPUT_DIR="'eval/flan-t5-base'" --gin.NUM_BEAMS=4

--checkpoint is a flan_jax checkpoint (model dir or checkpoints/<step>) or a Hugging Face
directory; it is the same as --gin.CHECKPOINT_PATH="'PATH'".

Decodes every chosen suite (batched, sharded over all devices and hosts, with a progress line
and ETA on stderr), scores it with the tasks' own metrics, and writes OUTPUT_DIR/results.json,
results.md (the paper's six columns and normalized average beside its rows), results.png and
predictions/{suite}.jsonl (each example's prompt, target and generated text).
"""

from __future__ import annotations

from flan_jax import allocator

if __name__ == "__main__":  # before numpy, TF or jax start threads that keep their own arenas
    allocator.configure()

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from collections.abc import Mapping, Sequence

import gin
import jax

import tasks.eval
import tasks.suites
from flan_jax import cli, evaluation, model_loader, partitioning, paths, report


def evaluate(
    *,
    output_dir: str,
    suite_feature_lengths: Mapping[str, Mapping[str, int]],
    partitioner: partitioning.Partitioner,
    checkpoint_path: str | None = None,
    model_gin_file: str | None = None,
    vocabulary_path: str | None = None,
    suites: Sequence[str] = tasks.suites.SUITES,
    subtasks: Mapping[str, Sequence[str]] | None = None,
    data_dirs: Mapping[str, str | None] | None = None,
    batch_size: int = 32,
    split: str = "test",
    num_examples: int | None = None,
    self_consistency_suites: Sequence[str] = tasks.suites.CHAIN_OF_THOUGHT_SUITES,
    num_samples: int = 1,
    temperature: float = 0.7,
    num_beams: int | None = None,
    seed: int = 0,
    label: str | None = None,
) -> dict:
    """Evaluates and writes the report; returns {suite: {task: {metric: value}}}.

    `data_dirs` ({"mmlu": path, ...}) override the FLAN_JAX_*_DIR variables; `num_samples`
    > 1 turns on self-consistency (sampling at `temperature`, majority vote) for
    `self_consistency_suites`; `num_beams` beam-searches the others (None: greedy).
    `checkpoint_path` is a flan_jax checkpoint or a Hugging Face directory.
    """
    for benchmark, path in (data_dirs or {}).items():
        if benchmark not in tasks.eval.DATA_DIR_ENVS:
            raise ValueError(
                f"data_dirs key {benchmark!r} is not a benchmark; use one of "
                f"{', '.join(tasks.eval.DATA_DIR_ENVS)}"
            )
        if path:
            os.environ[tasks.eval.DATA_DIR_ENVS[benchmark]] = path
    if checkpoint_path is None:
        raise ValueError(
            "no checkpoint to evaluate: pass --checkpoint=PATH (or --gin.CHECKPOINT_PATH), a "
            "flan_jax checkpoint or a Hugging Face directory"
        )
    output_dir = paths.path(output_dir, "OUTPUT_DIR")
    if jax.process_index() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.gin").write_text(gin.config_str())
    loaded = model_loader.load(
        checkpoint_path,
        partitioner,
        model_gin_file=model_gin_file,
        vocabulary_path=vocabulary_path,
    )
    tasks.eval.register_suites(suites, subtasks, loaded.vocabulary())
    evaluator = evaluation.SuiteEvaluator(
        suites,
        suite_feature_lengths,
        loaded.model,
        partitioner,
        jax.tree.map(lambda x: x.sharding, loaded.params),
        batch_size=batch_size,
        split=split,
        num_examples=num_examples,
        self_consistency_suites=self_consistency_suites,
        num_samples=num_samples,
        temperature=temperature,
        num_beams=num_beams,
        seed=seed,
        show_progress=True,
    )
    results = evaluator.evaluate(loaded.params)
    if jax.process_index() == 0:
        label = label or os.path.basename(os.path.normpath(checkpoint_path))
        details = {
            "checkpoint": checkpoint_path,
            "split": split,
            "num_examples_per_task": num_examples,
            "self_consistency": {
                "suites": [s for s in suites if s in self_consistency_suites and num_samples > 1],
                "num_samples": num_samples,
                "temperature": temperature,
            },
            "num_beams": num_beams,
        }
        truncated = evaluator.truncated()
        written = report.write_report(str(output_dir), label, results, details, truncated=truncated)
        written["predictions"] = report.write_predictions(str(output_dir), evaluator.predictions())
        print(report.markdown_table(label, report.summarize(results)), flush=True)
        for note in report.truncation_notes(truncated):
            print(note, flush=True)
        print(f"wrote {', '.join(written.values())}", flush=True)
    return results


def main(argv=None) -> None:
    cli.parse(argv, __doc__, checkpoint_macro="CHECKPOINT_PATH")
    gin.get_configurable(evaluate)()


if __name__ == "__main__":
    # Gin binds `flan_jax.evaluate.evaluate`; run that module's copy, not this `__main__` one.
    from flan_jax import evaluate as evaluate_module

    evaluate_module.main()
