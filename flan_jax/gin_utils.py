"""T5X-style command lines: `--gin_file=F` (repeatable), `--gin.MACRO=value`, `--gin_search_paths`."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Sequence

import gin

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
    search_paths = [p for p in args.gin_search_paths.split(",") if p] + [".", DEFAULT_SEARCH_PATH]
    logging.getLogger().addFilter(_HIDE_SEARCH_MISSES)
    for path in search_paths:
        gin.add_config_file_search_path(path)
    gin.parse_config_files_and_bindings(args.gin_file, bindings, finalize_config=True)
    return args
