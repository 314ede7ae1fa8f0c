"""What every comparison shares: worker processes driven in alternation, medians, the
synthetic batch both sides see, exporting flan_jax weights for transformers, markdown.

Each side of a comparison lives in its own worker process (`python -m benchmarks._worker`),
so torch and XLA never share a process or fight over its threads. The driver builds both
workers (model, weights, compile, warm-up), then asks them for one timed repetition at a
time, A, B, A, B, ...: a worker is idle while the other runs, and drift of the machine
(other load, clock changes) hits both sides alike, so the ratio of medians holds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Workers of CPU comparisons see only the CPU (libtpu is installed with the test extra and
# would otherwise probe for a TPU) and use every core; TF and XLA stay quiet. malloc is each
# side's own: the worker tunes it for the flan_jax sides as the entry points do (_worker.py).
CPU_ENV = {"JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}


class WorkerError(RuntimeError):
    pass


class Worker:
    """One side of a comparison: `MODULE.setup_SIDE(**args)` in a child process.

    The setup returns (info, run): `info` (a JSON-able dict, e.g. a sanity loss or the
    compile time) comes back once; each `run()` call performs one timed repetition and
    returns a dict with at least "seconds".
    """

    def __init__(self, module: str, side: str, args: Mapping[str, Any], env: Mapping[str, str]):
        self.name = f"{module}.{side}"
        self._log = tempfile.TemporaryFile(mode="w+")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker", module, side, json.dumps(dict(args))],
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.info = self._receive()["ready"]

    def peak_memory_gib(self) -> float:
        """The worker's peak resident memory so far (VmHWM), in GiB."""
        with open(f"/proc/{self._proc.pid}/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        return kib / 2**20

    def _receive(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            self._log.seek(0)
            tail = self._log.read()[-4000:]
            code = self._proc.returncode
            why = " (SIGKILL: most likely the kernel's out-of-memory killer)" if code == -9 else ""
            raise WorkerError(f"{self.name} exited with {code}{why}:\n{tail}")
        return json.loads(line)

    def run(self) -> dict:
        self._proc.stdin.write("run\n")
        self._proc.stdin.flush()
        return self._receive()["result"]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.write("exit\n")
            self._proc.stdin.flush()
            self._proc.wait(timeout=120)
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def alternate(workers: Sequence[Worker], repetitions: int) -> list[list[dict]]:
    """Runs the workers in turn for `repetitions` rounds; returns each worker's results, in
    the order given. Compiling is the setups' job; one untimed round first lets each side's
    allocator reach its steady state (flan_jax's second step is still twice as slow)."""
    for worker in workers:
        worker.run()
    results = [[] for _ in workers]
    for _ in range(repetitions):
        for worker, out in zip(workers, results):
            out.append(worker.run())
    return results


def compare_with_transformers(module: str, shape: Mapping[str, Any], repetitions: int):
    """Runs MODULE's flan_jax and transformers sides in alternation; the flan_jax side writes
    its initial weights into a shared HF directory that the transformers side then loads.
    Returns (flan_jax results, transformers results, flan_jax info, transformers info); each
    info has the side's peak memory ("peak_gib")."""
    with tempfile.TemporaryDirectory() as hf_dir:
        args = {"hf_dir": hf_dir, **shape}
        with Worker(module, "flan_jax", args, CPU_ENV) as ours:
            with Worker(module, "transformers", args, CPU_ENV) as theirs:
                our_runs, their_runs = alternate([ours, theirs], repetitions)
                for worker in (ours, theirs):
                    worker.info["peak_gib"] = worker.peak_memory_gib()
                return our_runs, their_runs, ours.info, theirs.info


def median(results: Sequence[Mapping[str, float]], key: str = "seconds") -> float:
    return statistics.median(r[key] for r in results)


def spread(results: Sequence[Mapping[str, float]], key: str = "seconds") -> str:
    """min-max of the repetitions, for the tables: how much the machine moved."""
    values = [r[key] for r in results]
    return f"{min(values):.3g}-{max(values):.3g}"


def synthetic_batch(
    batch_size: int, inputs_length: int, targets_length: int, vocab_size: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """An unpacked, padding-free EncDecFeatureConverter batch of random non-special tokens
    (ids >= 2: neither pad nor EOS), identical in every process for a given seed."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, vocab_size, (batch_size, inputs_length), dtype=np.int32)
    targets = rng.integers(2, vocab_size, (batch_size, targets_length), dtype=np.int32)
    decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": inputs,
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": targets,
    }


def write_hf_checkpoint(params, config, hf_dir: str) -> None:
    """flan_jax params -> an HF T5ForConditionalGeneration directory, so transformers
    starts from exactly the weights flan_jax has."""
    from safetensors.numpy import save_file

    from flan_jax.interop.hf_t5 import hf_config_from_t5, params_to_hf

    os.makedirs(hf_dir, exist_ok=True)
    save_file(params_to_hf(params, config), os.path.join(hf_dir, "model.safetensors"))
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(hf_config_from_t5(config), f)


def torch_threads() -> int:
    """Gives torch every core (its default can be fewer) and says how many."""
    import torch

    torch.set_num_threads(os.cpu_count())
    return torch.get_num_threads()


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else "**missed**"
