"""T5X-style command lines: `--gin_file=F` (repeatable), `--gin.MACRO=value`, `--gin_search_paths`,
and the multi-process flags every entry point shares."""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
from typing import Sequence

import gin
import jax

# The repo's gin/ folder, so run files can `include 'models/t5_1_1/tiny.gin'` from anywhere.
DEFAULT_SEARCH_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


class _HideSearchMisses(logging.Filter):
    """gin logs an ERROR for each search path that lacks an included file, even when a later
    path has it; a missing file still fails loudly with gin's own exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")


_HIDE_SEARCH_MISSES = _HideSearchMisses()


def parse(argv: Sequence[str], description: str) -> argparse.Namespace:
    """Parses flags, then gin files and `--gin.X=Y` bindings (bindings win, in order)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file; repeatable")
    parser.add_argument(
        "--gin_search_paths",
        default="",
        help="comma-separated folders searched for gin files and includes "
        f"(always also: the current directory and {DEFAULT_SEARCH_PATH})",
    )
    parser.add_argument(
        "--coordinator_address",
        help="host:port of process 0 for a multi-process run; 'auto' reads it from the "
        "Cloud TPU (or SLURM) environment. Unset: a single process.",
    )
    parser.add_argument("--num_processes", type=int, help="with --coordinator_address host:port")
    parser.add_argument("--process_id", type=int, help="with --coordinator_address host:port")
    args, rest = parser.parse_known_args(argv)
    bindings = []
    for item in rest:
        if not item.startswith("--gin.") or "=" not in item:
            parser.error(
                f"unrecognized argument {item!r}; gin bindings are written --gin.NAME=VALUE, "
                "e.g. --gin.TRAIN_STEPS=100 or --gin.MODEL_DIR=\"'/tmp/run'\""
            )
        bindings.append(item[len("--gin."):])
    if not args.gin_file:
        parser.error("at least one --gin_file is required, e.g. --gin_file=gin/runs/demo.gin")
    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    search_paths = [p for p in args.gin_search_paths.split(",") if p] + [".", DEFAULT_SEARCH_PATH]
    logging.getLogger().addFilter(_HIDE_SEARCH_MISSES)
    for path in search_paths:
        gin.add_config_file_search_path(path)
    try:
        gin.parse_config_files_and_bindings(args.gin_file, bindings, finalize_config=True)
    except ValueError as e:
        required = _REQUIRED_NOT_SET.match(str(e))
        if not required:
            raise
        name = required.group(1).removesuffix("/macro.value")
        raise ValueError(
            f"{name} is required by {', '.join(args.gin_file)} but was not set: pass "
            f"--gin.{name}=VALUE (strings in inner quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\") "
            "or set it in your run file."
        ) from None
    check_macros_used(bindings)
    return args


_REQUIRED_NOT_SET = re.compile(r"(\S+) set to `%gin.REQUIRED` but not subsequently overridden")


def check_macros_used(bindings: Sequence[str]) -> None:
    """Refuses `--gin.NAME=VALUE` for an UPPER_CASE macro that no loaded gin file uses: gin
    would accept it and the run would silently ignore the setting (a typo'd TRAIN_STEPS)."""
    referenced = _referenced_macros()
    for binding in bindings:
        name = binding.split("=", 1)[0].strip()
        if "." in name or "/" in name or name in referenced:
            continue
        close = difflib.get_close_matches(name, sorted(referenced), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"--gin.{binding}: no loaded gin file uses the macro {name}, so it would be "
            f"ignored.{hint} The macros these files use: {', '.join(sorted(referenced))}."
        )


def _referenced_macros() -> set[str]:
    """Names of the macros (`%NAME`) that the parsed bindings refer to."""
    names = set()

    def visit(value):
        if isinstance(value, gin.config.ConfigurableReference):
            if value.selector == "gin.macro":
                names.add(value.scoped_selector.rsplit("/", 1)[0])
        elif isinstance(value, (list, tuple, set)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    for parameters in gin.config._CONFIG.values():  # gin has no public view of its bindings
        visit(parameters)
    return names


def initialize_distributed(coordinator_address, num_processes, process_id) -> None:
    """Joins the processes of one run; must happen before anything touches a device."""
    if coordinator_address is None:
        return
    # CPU processes exchange collectives through gloo; other platforms ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address == "auto":
        jax.distributed.initialize()
        return
    if num_processes is None or process_id is None:
        raise ValueError(
            f"--coordinator_address={coordinator_address} needs --num_processes and --process_id "
            "(or pass --coordinator_address=auto on Cloud TPU)."
        )
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def load_model(gin_file: str):
    """(MODEL, VOCABULARY_PATH or None) defined by a gin model file, for tools that run a
    model without a run file (inference, export). Replaces any gin config parsed before."""
    gin.clear_config()
    logging.getLogger().addFilter(_HIDE_SEARCH_MISSES)
    gin.add_config_file_search_path(DEFAULT_SEARCH_PATH)
    gin.parse_config_file(gin_file)
    try:
        model = gin.query_parameter("%MODEL")
    except ValueError:
        raise ValueError(
            f"{gin_file} defines no MODEL; use a model file such as gin/models/t5_1_1/base.gin "
            "or the model.gin written by `python -m flan_jax.interop.hf_t5 import`"
        ) from None
    try:
        vocabulary_path = gin.query_parameter("%VOCABULARY_PATH")
    except ValueError:
        vocabulary_path = None
    return model.scoped_configurable_fn(), vocabulary_path


def model_gin_for_checkpoint(checkpoint: str) -> str:
    """The gin file describing a checkpoint's model: model.gin (written by the HF import) or
    config.gin (written by training) in the checkpoint's model dir."""
    path = os.path.abspath(checkpoint)
    # checkpoint may be the model dir, its checkpoints/ dir or a checkpoints/<step> dir.
    for directory in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        for name in ("model.gin", "config.gin"):
            if os.path.isfile(os.path.join(directory, name)):
                return os.path.join(directory, name)
    raise FileNotFoundError(
        f"no model.gin or config.gin next to checkpoint {checkpoint!r}; pass --gin_file with "
        "the model's gin file, e.g. gin/models/t5_1_1/base.gin"
    )
