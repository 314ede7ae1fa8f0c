"""Two processes on 127.0.0.1 (2 CPU devices each) train exactly what one 4-device process does."""

import os
import subprocess

from train_testing import REPO, device_env, free_port, logged_losses, train_command


def test_two_processes_train_the_same_losses_as_one(tmp_path):
    steps, bindings = 4, ["--gin.LOG_EVERY=1", "--gin.CHECKPOINT_EVERY=2"]
    single = tmp_path / "single"
    subprocess.run(
        train_command(single, steps, *bindings),
        check=True,
        cwd=REPO,
        env=device_env(4),
        capture_output=True,
        timeout=600,
    )

    multi = tmp_path / "multi"
    address = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            train_command(multi, steps, *bindings)
            + [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
            cwd=REPO,
            env=device_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "process 1 of 2" in outputs[1]

    expected = logged_losses(single)
    assert sorted(expected) == list(range(1, steps + 1))
    got = logged_losses(multi)
    assert sorted(got) == sorted(expected)
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-5 * abs(expected[step]), (step, got, expected)
    assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
