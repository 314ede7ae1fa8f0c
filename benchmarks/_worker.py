"""Child process of `_common.Worker`: `python -m benchmarks._worker MODULE SIDE JSON_ARGS`.

Speaks JSON lines on a private copy of stdout; the real stdout is pointed at stderr, so
whatever the libraries print cannot corrupt the protocol. Each side runs as its users run it:
the flan_jax sides tune malloc first, as flan_jax's entry points do (`flan_jax.allocator`);
torch and transformers keep glibc's defaults.
"""

import importlib
import json
import os
import sys

# The sides that run flan_jax's or jax's code, and so get the entry points' malloc setting.
JAX_SIDES = ("flan_jax", "jax")


def main() -> None:
    module_name, side, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if side in JAX_SIDES:  # before numpy or jax start a thread, as the entry points call it
        from flan_jax import allocator

        allocator.configure()
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def send(message):
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()

    module = importlib.import_module(f"benchmarks.{module_name}")
    info, run = getattr(module, f"setup_{side}")(**args)
    send({"ready": info})
    for command in sys.stdin:
        command = command.strip()
        if command == "run":
            send({"result": run()})
        elif command == "exit":
            return
        else:
            raise ValueError(f"unknown worker command {command!r}: expected 'run' or 'exit'")


if __name__ == "__main__":
    main()
