"""Two processes on 127.0.0.1: each restore reads about its own shards, and a chunk that only
one process reads, once corrupt, makes both refuse the step and fall back to the same one."""

import json
import os
import re
import socket
import subprocess
import sys

WORKER = os.path.join(os.path.dirname(__file__), "two_process_checkpoint.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_read_their_own_shards_and_fall_back_together(tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": REPO,
    }
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(tmp_path), address, str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    results = []
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
        results.append(json.loads(re.search(r"^RESULT (.*)$", out, re.M).group(1)))

    for process, result in enumerate(results):
        # Its own half of the kernel (2 of 4 shards, plus chunk indexes) and metadata only.
        own = result["own_chunk_bytes"]
        assert own > 2 * 2048 * 64 * 4 * 0.9, own
        assert result["restore_reads"] <= 1.1 * own + 256 * 1024, (process, result)
        assert result["refused"] is not None, result
        assert result["fell_back_to"] == 1
        assert result["steps_left"][0] == "1" and result["steps_left"][1].startswith("2.corrupt-")
    # Process 1 read the bad chunk and names it (its first in the file: c/2 or c/3, as the
    # writes landed); process 0 refuses because process 1 did.
    assert re.search(
        r"checkpoint step 2 is corrupt: .*/state/kernel/c/[23]/0: .*Digest", results[1]["refused"]
    )
    assert re.search(
        r"step 2 is corrupt: .*: process 1 read data that fails its checksum", results[0]["refused"]
    )
