"""Every kind of path on gs://, against a fake GCS server on 127.0.0.1 (tests/gcs.py): a
training run's checkpoints, TensorBoard events and config.gin in the bucket and its resume
from there; evaluate and infer from a gs:// checkpoint to gs:// outputs; two processes
training into one gs:// run; the server stopped in the middle of a save; the task cache; the
raw Flan sources and the benchmarks' files.
Each test also checks that no local `gs:` folder appeared (what `os.path.abspath` makes of
a gs:// URL). The checkpoint fault table on gs:// is in
tests/reliability/test_checkpoint_integrity.py."""

import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from eval_testing import write_benchmarks
from flan_testing import COT_DIR, NIV2_DIR, texts
from gcs import assert_no_local_gs_folder, download, upload
from orbax.checkpoint._src.serialization import tensorstore_utils
from train_testing import (  # noqa: F401 (run_from_repo_root: an autouse fixture)
    REPO,
    logged_losses,
    run_from_repo_root,
    train_in_process,
    train_processes,
)

import tasks.eval
from flan_jax import checkpoint_integrity, checkpoints, evaluate, infer, input_pipeline, task_cache
from tasks import demo
from tasks.eval import bbh, mgsm, mmlu, readers, tydiqa
from tasks.flan import cot, niv2, sources

QUICK = ["--gin.LENGTH_CHECK_EXAMPLES=0", "--gin.EVAL_EVERY=None"]


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):
    """A run trained to step 4 on gs://, then rerun to step 6 (a resume), with the objects
    it had after the first part; and the same 6 steps uninterrupted on local disk."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO)
        on_gs = gcs.path("run")
        train_in_process(on_gs, 4, *QUICK)
        first_part = gcs.objects(on_gs)
        first_config = (on_gs / "config.gin").read_text()
        resumed, _ = train_in_process(on_gs, 6, *QUICK)
        local = tmp_path_factory.mktemp("local_run")
        straight, _ = train_in_process(local, 6, *QUICK)
    return {
        "gs": on_gs,
        "first_part": first_part,
        "first_config": first_config,
        "resumed": resumed,
        "local": local,
        "straight": straight,
        "downloaded": downloaded_events(on_gs, tmp_path_factory.mktemp("downloaded")),
    }


def downloaded_events(model_dir, local) -> str:
    """A local directory holding a copy of gs:// `model_dir`'s training events, for
    train_testing.logged_losses."""
    download(model_dir / "train", os.path.join(local, "train"))
    return str(local)


def event_steps(events_dir):
    """{event file name: the steps it logs a loss for}."""
    return {
        name: sorted(
            event.step
            for event in tf.compat.v1.train.summary_iterator(os.path.join(events_dir, name))
            if any(value.tag == "loss" for value in event.summary.value)
        )
        for name in sorted(os.listdir(events_dir))
    }


def test_a_run_writes_checkpoints_events_and_config_gin_into_the_bucket(runs):
    objects = runs["first_part"]
    assert "config.gin" in objects
    steps = {name.split("/")[1] for name in objects if name.startswith("checkpoints/")}
    assert steps == {"2", "4"}, objects
    for step in steps:
        state = f"checkpoints/{step}/state/"
        assert f"{state}{checkpoint_integrity.RECORD_FILE}" in objects
        assert any(name.startswith(f"{state}") and "/d/" in name for name in objects)  # arrays
    (events,) = [name for name in objects if name.startswith("train/events.out.tfevents")]
    config = runs["first_config"]
    assert f"MODEL_DIR = '{runs['gs']}'" in config and "TRAIN_STEPS = 4" in config
    assert_no_local_gs_folder()


def test_a_run_resumed_from_gs_continues_with_an_uninterrupted_runs_losses(runs):
    assert int(runs["resumed"].step) == int(runs["straight"].step) == 6
    jax.tree.map(np.testing.assert_array_equal, runs["resumed"].params, runs["straight"].params)
    train = os.path.join(runs["downloaded"], "train")
    # Two event files, the second from the rerun: it started at the saved step 4.
    assert list(event_steps(train).values()) == [[1, 2, 3, 4], [5, 6]]
    expected = logged_losses(runs["local"])
    assert sorted(expected) == list(range(1, 7))
    assert logged_losses(runs["downloaded"]) == expected
    assert sorted(p.name for p in (runs["gs"] / "checkpoints").iterdir()) == ["2", "4", "6"]
    assert_no_local_gs_folder()


def test_infer_reads_a_gs_checkpoint_and_writes_gs_output(runs, gcs, tmp_path):
    """The gs:// run's parameters equal the local run's (above), so must its predictions."""
    examples = [{"inputs": "Sort: 3 1 2"}, {"inputs": "Is 4 greater than 7?", "targets": "no"}]
    given = gcs.path("infer")
    (given / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    common = ["--batch_size=8", "--max_input_length=32", "--max_decode_length=8"]
    common.append(f"--vocabulary={demo.vocabulary().sentencepiece_model_file}")
    infer.main(
        [f"--checkpoint={runs['gs']}", f"--input={given / 'in.jsonl'}"]
        + [f"--output={given / 'out.jsonl'}", *common]
    )
    infer.main(
        [f"--checkpoint={runs['local']}", f"--input={given / 'in.jsonl'}"]
        + [f"--output={tmp_path / 'out.jsonl'}", *common]
    )
    from_gs = [json.loads(line) for line in (given / "out.jsonl").read_text().splitlines()]
    assert from_gs == [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [{k: r[k] for k in e} for r, e in zip(from_gs, examples)] == examples
    assert "score" in from_gs[1] and "prediction" in from_gs[0]
    assert_no_local_gs_folder()


LENGTHS = {suite: {"inputs": 160, "targets": 12} for suite in tasks.eval.SUITES}


def test_evaluate_reads_a_gs_checkpoint_and_writes_its_report_to_gs(runs, gcs, tmp_path):
    data = write_benchmarks(tmp_path)
    settings = [
        "--gin_file=gin/eval/evaluate.gin",
        "--gin.SUITES=['tydiqa']",
        "--gin.SUBTASKS={'tydiqa': ['swahili']}",
        f"--gin.SUITE_FEATURE_LENGTHS={LENGTHS!r}",
        "--gin.BATCH_SIZE=8",
        "--gin.LABEL='tiny'",
        f"--gin.VOCABULARY_PATH='{demo.vocabulary().sentencepiece_model_file}'",
        f"--gin.TYDIQA_DIR='{data[tasks.eval.DATA_DIR_ENVS['tydiqa']]}'",
    ]
    output = gcs.path("evaluate")
    try:
        for checkpoint, output_dir in ((runs["gs"], output), (runs["local"], tmp_path / "out")):
            evaluate.main(
                [*settings, f"--checkpoint={checkpoint}", f"--gin.OUTPUT_DIR='{output_dir}'"]
            )
            gin.clear_config()
    finally:
        gin.clear_config()
        tasks.eval.register_suites()
    assert set(gcs.objects(output)) >= {
        "config.gin",
        "results.json",
        "results.md",
        "results.png",
        "predictions/tydiqa.jsonl",
    }
    from_gs = json.loads((output / "results.json").read_text())
    local = json.loads((tmp_path / "out" / "results.json").read_text())
    assert from_gs["tasks"] == local["tasks"] and from_gs["scores"] == local["scores"]
    assert from_gs["checkpoint"] == str(runs["gs"])
    predictions = (output / "predictions" / "tydiqa.jsonl").read_text()
    assert predictions == (tmp_path / "out" / "predictions" / "tydiqa.jsonl").read_text()
    assert_no_local_gs_folder()


@pytest.mark.slow  # 100-200 s here: two fresh processes / gcsfs retrying the dead server
def test_two_processes_train_one_run_on_gs(runs, gcs, tmp_path):
    """Two processes on 127.0.0.1 (2 CPU devices each) write one run into the bucket, with
    the losses of the one-process run."""
    model_dir = gcs.path("two_processes")
    outputs = train_processes(model_dir, 4, *QUICK, processes=2, devices=4)
    assert "process 1 of 2" in outputs[1]
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["2", "4"]
    got = logged_losses(downloaded_events(model_dir, tmp_path))
    expected = logged_losses(runs["local"])
    assert sorted(got) == [1, 2, 3, 4]
    for step in got:
        assert abs(got[step] - expected[step]) <= 1e-5 * abs(expected[step]), (step, got, expected)
    assert_no_local_gs_folder()


def sharded_state(scale: float, rows: int):
    mesh = jax.make_mesh((8,), ("x",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))
    kernel = np.arange(rows * 256, dtype=np.float32).reshape(rows, 256) * scale
    return {"kernel": jax.device_put(kernel, sharding)}


@pytest.mark.slow  # 100-200 s here: two fresh processes / gcsfs retrying the dead server
def test_storage_stopping_mid_save_names_the_step_and_keeps_the_earlier_steps(gcs, monkeypatch):
    """The server is killed while step 2 (64 MiB) uploads: the error names the step and the
    bucket path; once the server is back (its filesystem backend kept the objects), step 1
    restores and the partial step 2 is not listed."""
    # TensorStore's default: 32 retries up to 32 s apart, minutes before the error surfaces.
    retries = {"max_retries": 2, "initial_delay": "0.1s", "max_delay": "0.2s"}
    monkeypatch.setitem(tensorstore_utils._DEFAULT_OCDBT_TS_CONTEXT, "gcs_request_retries", retries)
    model_dir = gcs.path("mid_save")
    checkpointer = checkpoints.Checkpointer(str(model_dir))
    checkpointer.save(1, sharded_state(1, 8), {"step": 1})
    checkpointer.wait_until_finished()
    try:
        checkpointer.save(2, sharded_state(2, 64 * 1024), {"step": 2})
        gcs.stop()
        with pytest.raises(checkpoints.CheckpointWriteError) as caught:
            checkpointer.wait_until_finished()
    finally:
        gcs.start()
    message = str(caught.value)
    assert f"saving checkpoint step 2 to {model_dir}/checkpoints failed" in message, message
    reopened = checkpoints.Checkpointer(str(model_dir))
    try:
        assert reopened.all_steps() == [1]
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            sharded_state(1, 8),
        )
        state, data_state = reopened.restore(target)
    finally:
        reopened.close()
    assert data_state == {"step": 1}
    np.testing.assert_array_equal(state["kernel"], sharded_state(1, 8)["kernel"])
    assert_no_local_gs_folder()


CACHE_LENGTHS = {"inputs": 16, "targets": 8}


def test_task_cache_is_written_to_and_read_from_gs(gcs):
    """`python -m flan_jax.cache_tasks` caches a demo task into the bucket; training's reader
    gets back exactly the examples seqio gives."""
    cache_dir = gcs.path("cache")
    command = [
        sys.executable,
        "-m",
        "flan_jax.cache_tasks",
        "--gin_file=runs/demo.gin",
        "--gin.MIXTURE_OR_TASK_NAME='demo_sort'",
        f"--gin.TASK_FEATURE_LENGTHS={CACHE_LENGTHS}",
        f"--gin.CACHE_DIR='{cache_dir}'",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cached 1 tasks" in result.stdout
    names = gcs.objects(cache_dir)
    assert f"demo_sort/{task_cache.SPEC_FILE}" in names
    assert any(name.startswith("demo_sort/train.array_record-") for name in names)
    (cached,) = input_pipeline.cached_tasks("demo_sort", CACHE_LENGTHS, str(cache_dir))
    task = seqio.get_mixture_or_task("demo_sort")
    expected = list(
        task.get_dataset(
            sequence_length=CACHE_LENGTHS,
            split="train",
            shuffle=False,
            num_epochs=1,
            use_cached=False,
        ).as_numpy_iterator()
    )
    assert len(cached.source) == len(expected) == cached.spec["num_examples"]
    for index in (0, 1, len(expected) // 2, len(expected) - 1):
        got = task_cache.decode(cached.source[index])
        for name in ("inputs", "targets"):
            np.testing.assert_array_equal(got[name], expected[index][name])
    assert_no_local_gs_folder()


def test_niv2_and_cot_files_on_gs_render_the_same_examples_as_on_local_disk(gcs, flan_env):
    """FLAN_JAX_NIV2_DIR and FLAN_JAX_COT_DIR may be gs:// directories: the task listing, the
    streamed instances and the rendered training examples match the local files'."""
    niv2_gs = upload(NIV2_DIR, gcs.path("natural-instructions"))
    cot_gs = upload(COT_DIR, gcs.path("cot_data"))
    local_files, gs_files = sources.niv2_task_files(NIV2_DIR), sources.niv2_task_files(str(niv2_gs))
    assert list(gs_files) == list(local_files) and gs_files
    for name, path in local_files.items():
        assert sources.niv2_definition(gs_files[name]) == sources.niv2_definition(path)
        assert list(sources.niv2_instances(gs_files[name])) == list(sources.niv2_instances(path))
    for dataset in cot.DATASETS:
        local_rows = sources.read_cot_tsv(sources.cot_path(COT_DIR, dataset))
        assert sources.read_cot_tsv(sources.cot_path(str(cot_gs), dataset)) == local_rows

    def rendered(niv2_dir, cot_dir):
        cot.use_directory(cot_dir)
        picked = [
            sorted(names)[:: max(1, len(names) // 3)]
            for names in (niv2.register(niv2_dir), cot.register())
        ]
        return {name: texts(_train_split(name), limit=4) for name in sum(picked, [])}

    try:
        local = rendered(NIV2_DIR, COT_DIR)
        assert len(local) >= 6 and all(local.values())
        assert rendered(str(niv2_gs), str(cot_gs)) == local
    finally:
        niv2.register(NIV2_DIR)
        cot.use_directory(None)
    assert_no_local_gs_folder()


def _train_split(name):
    task = seqio.get_mixture_or_task(name)
    return task.get_dataset(sequence_length=None, split="train", shuffle=False, num_epochs=1)


def test_benchmark_files_on_gs_give_the_same_examples_as_on_local_disk(gcs, tmp_path):
    """Each benchmark's data directory may be on gs://."""
    local = write_benchmarks(tmp_path)
    on_gs = {env: str(upload(d, gcs.path(os.path.basename(d)))) for env, d in local.items()}
    env = tasks.eval.DATA_DIR_ENVS

    def read_all(dirs):
        return {
            "mmlu": [
                mmlu.examples("anatomy", c, split, dirs[env["mmlu"]])
                for c in (False, True)
                for split in ("validation", "test")
            ],
            "bbh": [bbh.examples("navigate", c, dirs[env["bbh"]]) for c in (False, True)],
            "tydiqa": tydiqa.examples("swahili", dirs[env["tydiqa"]]),
            "mgsm": [mgsm.examples(language, dirs[env["mgsm"]]) for language in ("de", "zh")],
        }

    assert read_all(on_gs) == read_all(local)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(env["mgsm"], on_gs[env["mgsm"]])
        assert readers.data_dir(env["mgsm"], "MGSM") == on_gs[env["mgsm"]]
    assert_no_local_gs_folder()
