"""flan_jax.paths: what a user path becomes, what is refused, and that gs:// URLs reach the
storage as URLs (never as a local `gs:` folder) through config.gin, the checkpointer, the
integrity record and TensorBoard events. gs:// is served here by a local folder put behind
epath's gcsfs backend; tests/test_gcs.py runs the same code against a GCS emulator."""

import json
import os
import struct

import gin
import pytest
from etils import epath
from etils.epath import backend

from flan_jax import checkpoint_integrity, checkpoints, cli, paths, summaries


def test_local_paths_are_expanded_and_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert os.fspath(paths.path("~/run", "MODEL_DIR")) == str(tmp_path / "home" / "run")
    assert os.fspath(paths.path("runs/a/../b", "MODEL_DIR")) == str(tmp_path / "runs" / "b")
    assert os.fspath(paths.path(tmp_path / "x", "MODEL_DIR")) == str(tmp_path / "x")
    assert isinstance(paths.path("run", "MODEL_DIR"), epath.Path)
    assert paths.is_local(paths.path("run", "MODEL_DIR"))


def test_gs_urls_stay_urls():
    run = paths.path("gs://bucket/flan/run", "MODEL_DIR")
    assert os.fspath(run) == "gs://bucket/flan/run"
    assert os.fspath(run / "checkpoints" / "10") == "gs://bucket/flan/run/checkpoints/10"
    assert os.fspath(run.parent) == "gs://bucket/flan"
    assert not paths.is_local(run) and not paths.is_local("gs://bucket/flan/run")
    # What os.path.abspath and pathlib make of it, and what must never happen again:
    assert os.path.abspath("gs://bucket/run").endswith("/gs:/bucket/run")


@pytest.mark.parametrize(
    "value", ["s3://bucket/run", "http://host/run", "hf://google/flan-t5", "file:///tmp/run"]
)
def test_other_schemes_are_refused_naming_the_setting_and_what_works(value):
    scheme = value.split("://")[0]
    with pytest.raises(ValueError) as error:
        paths.path(value, "MODEL_DIR")
    assert str(error.value) == (
        f"MODEL_DIR {value!r}: the scheme {scheme}:// is not supported; give a local path or "
        "gs://BUCKET/PATH (copy other storage to one of those first)"
    )


def test_a_url_cut_down_to_one_slash_is_refused():
    with pytest.raises(ValueError, match=r"CACHE_DIR 'gs:/bucket/run' looks like a gs:// URL"):
        paths.path("gs:/bucket/run", "CACHE_DIR")


def test_gs_without_a_bucket_or_without_gcsfs_is_refused(monkeypatch):
    with pytest.raises(ValueError, match=r"MODEL_DIR 'gs:///run' names no bucket"):
        paths.path("gs:///run", "MODEL_DIR")
    with pytest.raises(ValueError, match="OUTPUT_DIR is empty"):
        paths.path("", "OUTPUT_DIR")
    monkeypatch.setattr(paths, "_gcsfs_installed", lambda: False)
    with pytest.raises(ValueError, match=r"OUTPUT_DIR 'gs://b/x' is on Google Cloud Storage, "):
        paths.path("gs://b/x", "OUTPUT_DIR")


def test_epath_reaches_gs_through_gcsfs_not_tensorflow():
    assert os.environ["EPATH_USE_TF"] == "false"
    assert epath.Path("gs://bucket/run")._backend is backend.fsspec_backend


class LocalBucket:
    """gcsfs as epath's fsspec backend calls it, on a local folder: gs://B/X is ROOT/B/X.
    Like gcsfs, it needs no folders before a file is written."""

    def __init__(self, root):
        import fsspec

        self.root = str(root)
        self.local = fsspec.filesystem("file", auto_mkdir=True, skip_instance_cache=True)

    def _local(self, value):
        if isinstance(value, str) and value.startswith("gs://"):
            return os.path.join(self.root, value[len("gs://") :])
        return value

    def __getattr__(self, name):
        method = getattr(self.local, name)
        return lambda *args, **kwargs: method(*map(self._local, args), **kwargs)

    def glob(self, pattern):  # gcsfs's matches carry no scheme
        return [os.path.relpath(p, self.root) for p in self.local.glob(self._local(pattern))]

    def invalidate_cache(self, path=None):
        pass


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """gs:// served from tmp_path/storage; the test runs in tmp_path/cwd, which must stay
    empty (a mangled URL would land there as a `gs:` folder)."""
    fake, real = LocalBucket(tmp_path / "storage"), backend.fsspec_backend.fs
    monkeypatch.setattr(
        backend.fsspec_backend,
        "fs",
        lambda p: fake if os.fspath(p).startswith("gs://") else real(p),
    )
    monkeypatch.setattr(paths, "_gcsfs_installed", lambda: True)
    # Orbax asks google-cloud-storage whether a bucket has hierarchical namespaces.
    from orbax.checkpoint._src.path import gcs_utils

    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    yield tmp_path / "storage" / "bucket"
    assert os.listdir(tmp_path / "cwd") == []


def test_train_config_and_checkpointer_write_to_the_gs_url(bucket):
    from flan_jax import train

    with cli.separate_gin_config():
        gin.parse_config("MODEL_DIR = 'gs://bucket/run'")
        train._write_config(paths.path("gs://bucket/run", "MODEL_DIR"))
        assert (bucket / "run" / "config.gin").read_text() == gin.config_str()
    checkpointer = checkpoints.Checkpointer("gs://bucket/run")
    try:
        assert os.fspath(checkpointer.directory) == "gs://bucket/run/checkpoints"
        assert checkpointer.latest_step() is None
    finally:
        checkpointer.close()
    assert (bucket / "run" / "checkpoints").is_dir()


def _events(path):
    """The Event protos of a TFRecord file (length, its CRC, data, its CRC)."""
    from tensorboardX.proto import event_pb2

    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 12 + length + 4
    return events


def test_tensorboard_events_are_written_to_the_gs_url(bucket):
    writer = summaries.ProgressWriter(
        "gs://bucket/run",
        total_steps=10,
        start_step=0,
        tokens_per_step=1,
        flops_per_step=1.0,
        peak_flops=None,
    )
    writer.scalars("train", 3, {"loss": 2.5})
    writer.scalars("eval/task", 3, {"accuracy": 0.75})
    writer.close()
    for name, tag, value in [("train", "loss", 2.5), ("eval/task", "accuracy", 0.75)]:
        (events_file,) = (bucket / "run" / name).iterdir()
        assert events_file.name.startswith("events.out.tfevents.")
        scalars = [
            (e.step, v.tag, v.simple_value) for e in _events(events_file) for v in e.summary.value
        ]
        assert scalars == [(3, tag, value)]


def test_integrity_record_on_gs_names_gs_paths(bucket):
    state = "gs://bucket/run/checkpoints/7/state"
    files = {
        "_METADATA": b'{"tree": 1}',
        "manifest.ocdbt": b"manifest",
        "d/0a1b": b"chunk bytes" * 10,
        "ocdbt.process_0/d/ff00": b"more chunks",
    }
    for name, content in files.items():
        epath.Path(f"{state}/{name}").write_bytes(content)
    checkpoint_integrity.write_record(state, "digest")
    record = json.loads(
        (bucket / "run/checkpoints/7/state" / checkpoint_integrity.RECORD_FILE).read_text()
    )
    assert {name: entry["bytes"] for name, entry in record["files"].items()} == {
        name: len(content) for name, content in files.items()
    }
    # Chunks in OCDBT's d/ folders are covered by their own CRC32Cs, not hashed again.
    assert sorted(n for n, e in record["files"].items() if "sha256" in e) == [
        "_METADATA",
        "manifest.ocdbt",
    ]
    assert (
        checkpoint_integrity.verify("gs://bucket/run/checkpoints/7", 7)["data_sha256"] == "digest"
    )

    (bucket / "run/checkpoints/7/state/_METADATA").write_bytes(b'{"tree": 2}')
    with pytest.raises(checkpoints.CorruptCheckpointError) as error:
        checkpoint_integrity.verify("gs://bucket/run/checkpoints/7", 7)
    assert str(error.value).startswith(
        f"checkpoint step 7 is corrupt: {state}/_METADATA: contents changed since it was saved"
    )
    (bucket / "run/checkpoints/7/state/_METADATA").write_bytes(b'{"tree": 1}')
    (bucket / "run/checkpoints/7/state/ocdbt.process_0/d/ff00").unlink()
    with pytest.raises(checkpoints.CorruptCheckpointError) as error:
        checkpoint_integrity.verify("gs://bucket/run/checkpoints/7", 7)
    assert str(error.value).startswith(
        f"checkpoint step 7 is corrupt: {state}/ocdbt.process_0/d/ff00: file missing"
    )


def test_a_failed_save_leaves_the_committed_steps_and_no_private_names(tmp_path):
    """Whatever Orbax named the failed step's directory (`6.orbax-checkpoint-tmp-*` on local
    disk, `6` itself on GCS), it goes; committed and set-aside steps stay."""
    for name in ["2", "4", "4.corrupt-20261202-010203", "6", "6.orbax-checkpoint-tmp-99", "60"]:
        (tmp_path / name / "state").mkdir(parents=True)
    checkpoints.remove_partial_save(epath.Path(tmp_path), 6)
    assert sorted(os.listdir(tmp_path)) == ["2", "4", "4.corrupt-20261202-010203", "60"]


def test_path_macros_and_variables_are_checked_before_anything_runs(tmp_path, monkeypatch):
    run_file = tmp_path / "run.gin"
    run_file.write_text("MODEL_DIR = 's3://bucket/run'\n")
    with cli.separate_gin_config():
        with pytest.raises(ValueError, match=r"^MODEL_DIR 's3://bucket/run': the scheme s3://"):
            cli.parse_gin([str(run_file)], [])
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FLAN_JAX_VOCAB", "~/spiece.model")
    cli.expand_path_variables()
    assert os.environ["FLAN_JAX_VOCAB"] == str(tmp_path / "spiece.model")
    monkeypatch.setenv("FLAN_JAX_NIV2_DIR", "https://host/natural-instructions")
    with pytest.raises(ValueError, match=r"^FLAN_JAX_NIV2_DIR 'https://host/natural-instr"):
        cli.expand_path_variables()


def test_a_gin_file_may_be_a_gs_url(bucket):
    epath.Path("gs://bucket/ckpt/model.gin").write_text("VOCAB_SIZE = 77\n")
    with cli.separate_gin_config():
        cli.parse_gin(["gs://bucket/ckpt/model.gin"], [])
        assert gin.query_parameter("%VOCAB_SIZE") == 77
