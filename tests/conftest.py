"""Every test sees 8 fake CPU devices, so sharded code paths run as they would on a pod."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Read when gcsfs and google-auth are imported, whichever test imports them first: no gRPC
# bucket-type probe (60 s a call against the fake GCS server), no metadata-server probe.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("NO_GCE_CHECK", "true")

import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config():
    from flan_jax.models import t5

    return t5.T5Config(
        vocab_size=64,
        d_model=32,
        num_heads=8,
        d_kv=8,
        d_ff=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    )


@pytest.fixture(scope="session")
def fixed_batch(tiny_config):
    """An unpacked encoder-decoder batch of 8 rows with padding, as seqio's converter emits."""
    rng = np.random.default_rng(0)
    batch, inputs_len, targets_len = 8, 12, 6
    inputs = rng.integers(2, tiny_config.vocab_size, (batch, inputs_len), dtype=np.int32)
    targets = rng.integers(2, tiny_config.vocab_size, (batch, targets_len), dtype=np.int32)
    for row in range(batch):
        inputs[row, inputs_len - row % 4 :] = 0
        targets[row, targets_len - row % 3 - 1] = 1  # EOS
        targets[row, targets_len - row % 3 :] = 0
    decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_input_tokens": decoder_inputs,
        "decoder_loss_weights": (targets > 0).astype(np.int32),
    }


@pytest.fixture(scope="module")
def flan_env():
    """The Flan tasks registered over tests/fixtures/flan, with the demo vocabulary as
    $FLAN_JAX_VOCAB (no network, no TFDS downloads)."""
    from flan_testing import COT_DIR, NIV2_DIR

    from tasks import demo, vocab
    from tasks.flan import sources

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(vocab.FLAN_VOCAB_ENV, demo.vocabulary().sentencepiece_model_file)
        patch.setenv(sources.COT_DIR_ENV, COT_DIR)
        patch.setenv(sources.NIV2_DIR_ENV, NIV2_DIR)
        import tasks.flan
        from tasks.flan import cot

        cot.use_directory(None)
        tasks.flan.register_all()
        yield tasks.flan


@pytest.fixture(scope="session")
def tiny_decoder_config():
    """A two-layer PaLM-style decoder: multi-query attention, RoPE, SwiGLU."""
    from flan_jax.models import decoder

    return decoder.DecoderConfig(
        vocab_size=64, d_model=32, num_heads=4, head_dim=8, d_ff=64, num_layers=2
    )


@pytest.fixture(scope="session")
def prefix_lm_batch():
    """prefix_lm_batch(pack) -> seqio.PrefixLMFeatureConverter's output for two short
    examples, stacked into one batch (one packed row, or two rows)."""

    def converted(pack):
        import seqio
        import tensorflow as tf

        examples = [
            {"inputs": [9, 8, 7, 1], "targets": [5, 4, 1]},
            {"inputs": [7, 1], "targets": [3, 6, 3, 2, 1]},
        ]
        ds = tf.data.Dataset.from_generator(
            lambda: iter(examples),
            output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")},
        )
        converted = seqio.PrefixLMFeatureConverter(pack=pack)(ds, {"inputs": 8, "targets": 8})
        rows = list(converted.as_numpy_iterator())
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    return converted


@pytest.fixture(scope="module")
def hf_model():
    """A tiny random Hugging Face T5 (needs torch and transformers)."""
    from hf_testing import HF_CONFIGS, random_hf_t5

    return random_hf_t5(seed=0, overrides=HF_CONFIGS[0])


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    """hf_model saved as a Flan-T5 hub directory (config, safetensors, spiece.model)."""
    from hf_testing import save_hf_dir

    return save_hf_dir(tmp_path_factory.mktemp("hf"), hf_model)


@pytest.fixture(scope="module")
def imported(hf_dir, tmp_path_factory):
    """hf_dir imported into a flan_jax model dir by `python -m flan_jax.convert import`."""
    from flan_jax import convert

    out = str(tmp_path_factory.mktemp("imported"))
    convert.main(["import", "--format", "hf", "--checkpoint", hf_dir, "--output", out])
    return out


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
    """A fake GCS server on 127.0.0.1 for the session (tests/gcs.py), with the environment
    that points every client at it set for the tests and the processes they start."""
    from gcs import FakeGcs, environment

    server = FakeGcs(str(tmp_path_factory.mktemp("gcs")))
    server.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment(server.url).items():
                patch.setenv(name, value)
            _forget_gcs_clients()
            yield server
        _forget_gcs_clients()
    finally:
        server.stop()


def _forget_gcs_clients():
    """Drops the gs:// clients that etils.epath and fsspec keep, so the next one is made
    with the current endpoint."""
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    if "gcsfs" in sys.modules:
        sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()
