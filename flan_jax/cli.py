"""The front door of every entry point: flags, gin files and bindings, logging, jax.distributed.

Gin-configured entry points (train, evaluate) call `parse`; the others build their parser
with `new_parser`, add their own flags and call `parse_args`. Either way a command line has
`--help`, the same multi-process and logging flags, and one gin search path:
`--gin_search_paths`, the current directory, then flan_jax's own gin/ folder (the repo's, or
the copy installed with the package) -- from whatever directory the command runs.

Paths given as gin macros named `*_DIR`, `*_PATH` or `*_FILE` and the environment variables
in `PATH_VARIABLES` are checked here (`flan_jax.paths`): a scheme flan_jax cannot use stops
the command before it does any work, and the variables are expanded in place for tasks/,
which reads them. A gin file may be a gs:// URL (a model.gin beside a checkpoint there).

Entry points keep `os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")` above their imports:
TensorFlow reads it when it loads, before any of this runs.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence

import gin
import jax
from etils import epath

from flan_jax import allocator, paths

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _gin_dir() -> str:
    """setup.py installs gin/ as flan_jax/gin; a source checkout has it beside flan_jax/."""
    installed = os.path.join(_PACKAGE_DIR, "gin")
    return (
        installed
        if os.path.isdir(installed)
        else os.path.join(os.path.dirname(_PACKAGE_DIR), "gin")
    )


GIN_DIR = _gin_dir()

# Environment variables naming paths that tasks/ reads (it imports no flan_jax).
PATH_VARIABLES = (
    "FLAN_JAX_VOCAB",
    "FLAN_JAX_RELEASED_DIR",
    "FLAN_JAX_NIV2_DIR",
    "FLAN_JAX_COT_DIR",
    "FLAN_JAX_MMLU_DIR",
    "FLAN_JAX_BBH_DIR",
    "FLAN_JAX_TYDIQA_DIR",
    "FLAN_JAX_MGSM_DIR",
    "TFDS_DATA_DIR",
)
_PATH_MACRO = re.compile(r"[A-Z][A-Z0-9_]*_(DIR|PATH|FILE)")

# Spellings of earlier versions, refused with their replacement.
RENAMED = {
    "--hf_dir": "--checkpoint (a flan_jax checkpoint or a Hugging Face directory)",
    "--out": "--output (the directory written)",
    "--gin_file": "--model_gin_file (the gin file defining the checkpoint's model)",
    "--gin.HF_DIR": "--gin.CHECKPOINT_PATH (a flan_jax checkpoint or a Hugging Face directory)",
}


def new_parser(
    description: str, *, gin_files: bool = False, distributed: bool = False
) -> argparse.ArgumentParser:
    """A parser with the flags this kind of entry point shares with the others."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="gin bindings: --gin.NAME=VALUE after the files, e.g. --gin.TRAIN_STEPS=100 or "
        "--gin.MODEL_DIR=\"'/tmp/run'\" (strings in inner quotes)"
        if gin_files
        else None,
    )
    if gin_files:
        parser.add_argument("--gin_file", action="append", default=[], help="repeatable")
        parser.add_argument(
            "--gin_search_paths",
            default="",
            help="comma-separated folders searched for gin files and their includes before "
            f"the current directory and {GIN_DIR}",
        )
    if distributed:
        parser.add_argument(
            "--coordinator_address",
            help="host:port of process 0 for a multi-process run; 'auto' reads it from the "
            "Cloud TPU (or SLURM) environment. Unset: a single process.",
        )
        parser.add_argument("--num_processes", type=int, help="with --coordinator_address")
        parser.add_argument("--process_id", type=int, help="with --coordinator_address")
    parser.add_argument(
        "--verbose", action="store_true", help="also show the libraries' warnings and logs"
    )
    return parser


def add_checkpoint_flags(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, --model_gin_file, --vocabulary: what `model_loader.load` reads, named the
    same in every entry point that reads a checkpoint."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a flan_jax model dir or checkpoints/<step> dir, or a Hugging Face T5 directory "
        "(config.json, safetensors, spiece.model)",
    )
    parser.add_argument(
        "--model_gin_file",
        help="the model's gin file (default: model.gin or config.gin next to a flan_jax "
        "checkpoint)",
    )
    parser.add_argument(
        "--vocabulary",
        help="spiece.model (default: the HF dir's, the model gin's VOCABULARY_PATH, or "
        "$FLAN_JAX_VOCAB)",
    )


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Flags (`--gin.X=Y` bindings into `args.gin_bindings`); logging and, for a multi-process
    run, jax.distributed: all before anything touches a device. (The entry modules tune
    malloc earlier still, before their imports: see flan_jax.allocator.)"""
    if not os.environ.get("JAX_PLATFORMS") and allocator.runs_on_cpu():
        # No accelerator here: spare the user libtpu's failed probe (a screen of errors).
        jax.config.update("jax_platforms", "cpu")
    argv = sys.argv[1:] if argv is None else list(argv)
    takes_gin = any(action.dest == "gin_file" for action in parser._actions)
    known = _option_strings(parser)
    for item in argv:
        name = item.split("=", 1)[0]
        if name in RENAMED and name not in known:
            parser.error(f"{name} is now {RENAMED[name]}")
    args, rest = parser.parse_known_args(argv)
    bindings = []
    for item in rest:
        if not takes_gin or not item.startswith("--gin.") or "=" not in item:
            hint = (
                "; gin bindings are written --gin.NAME=VALUE, e.g. --gin.TRAIN_STEPS=100"
                if takes_gin
                else ""
            )
            parser.error(f"unrecognized argument {item!r}{hint}")
        bindings.append(item[len("--gin.") :])
    args.gin_bindings = bindings
    configure_logging(verbose=args.verbose)
    expand_path_variables()
    if hasattr(args, "coordinator_address"):
        initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    return args


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag the parser or one of its subcommands takes."""
    names = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                names |= _option_strings(subparser)
    return names


def parse(
    argv: Sequence[str] | None, description: str, *, checkpoint_macro: str | None = None
) -> argparse.Namespace:
    """A gin-configured entry point's command line: flags, then the gin files and bindings
    (bindings win, in order) into gin's global config. `checkpoint_macro` adds
    `--checkpoint=PATH`, the same as `--gin.<checkpoint_macro>='PATH'`."""
    parser = new_parser(description, gin_files=True, distributed=True)
    if checkpoint_macro:
        parser.add_argument(
            "--checkpoint",
            help=f"a flan_jax checkpoint (model dir or checkpoints/<step>) or a Hugging Face "
            f"directory; the same as --gin.{checkpoint_macro}=\"'PATH'\"",
        )
    args = parse_args(parser, argv)
    if not args.gin_file:
        parser.error("at least one --gin_file is required, e.g. --gin_file=gin/runs/demo.gin")
    if checkpoint_macro and args.checkpoint:
        args.gin_bindings.insert(0, f"{checkpoint_macro} = {args.checkpoint!r}")
    parse_gin(args.gin_file, args.gin_bindings, search_paths=args.gin_search_paths.split(","))
    return args


def gin_args(args: argparse.Namespace) -> list[str]:
    """The gin part of a parsed command line, as arguments again (for `split_gin_args`)."""
    return [
        *(f"--gin_file={f}" for f in args.gin_file),
        f"--gin_search_paths={args.gin_search_paths}",
        *(f"--gin.{b}" for b in args.gin_bindings),
    ]


def split_gin_args(arguments: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(files, bindings, search paths) of `--gin_file=F`, `--gin.X=Y` and
    `--gin_search_paths=A,B` arguments, for library calls that take a command line's gin
    part (the AOT check, which parses one run under several layouts)."""
    files, bindings, search_paths = [], [], []
    for item in arguments:
        flag, _, value = item.partition("=")
        if flag == "--gin_file":
            files.append(value)
        elif flag == "--gin_search_paths":
            search_paths += value.split(",")
        elif flag.startswith("--gin.") and value:
            bindings.append(item[len("--gin.") :])
        else:
            raise ValueError(
                f"{item!r} is not --gin_file=FILE, --gin.NAME=VALUE or --gin_search_paths=DIRS"
            )
    return files, bindings, search_paths


_REQUIRED_NOT_SET = re.compile(r"(\S+) set to `%gin.REQUIRED` but not subsequently overridden")


def parse_gin(
    files: Sequence[str],
    bindings: Sequence[str],
    *,
    search_paths: Sequence[str] = (),
    finalize: bool = True,
) -> None:
    """Parses gin files and bindings into gin's config (finalized), files and includes looked
    up on flan_jax's search path; a missing REQUIRED macro or an unused UPPER_CASE macro
    binding is refused saying what to pass. `finalize=False` leaves REQUIRED macros unset for
    an entry point that reads only some of a run file's settings (the task cache needs no
    MODEL_DIR)."""
    try:
        with _search_path([p for p in search_paths if p] + [".", GIN_DIR]):
            gin.parse_config_files_and_bindings(files, bindings, finalize_config=finalize)
    except ValueError as e:
        required = _REQUIRED_NOT_SET.match(str(e))
        if not required:
            raise
        name = required.group(1).removesuffix("/macro.value")
        raise ValueError(
            f"{name} is required by {', '.join(files)} but was not set: pass "
            f"--gin.{name}=VALUE (strings in inner quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\") "
            "or set it in your run file."
        ) from None
    check_macros_used(bindings)
    check_path_macros()


def expand_path_variables() -> None:
    """Each set PATH_VARIABLES entry, checked and made absolute (`~` expanded) in place."""
    for name in PATH_VARIABLES:
        if os.environ.get(name):
            os.environ[name] = os.fspath(paths.path(os.environ[name], name))


def check_path_macros() -> None:
    """Refuses a path-valued macro (`*_DIR`, `*_PATH`, `*_FILE`) whose scheme flan_jax cannot
    read or write, naming it, before anything runs; the code that uses it normalizes it."""
    for (scope, selector), parameters in gin.config._CONFIG.items():  # gin has no public view
        value = parameters.get("value")
        if selector.endswith("gin.macro") and _PATH_MACRO.fullmatch(scope or ""):
            if isinstance(value, str) and value:
                paths.path(value, scope)


class GinFileNotFoundError(FileNotFoundError):
    """A gin file (or an include) found in none of the search path's folders."""


@contextlib.contextmanager
def _search_path(folders: Sequence[str]) -> Iterator[None]:
    """gin resolves files itself while this is active: relative names through `folders`,
    one reader, and an error naming the file, its includer, the folders and the fix.

    gin's own lookup tries each name against the current directory first and then as a
    Python package resource, which raises a bare TypeError when the name's first folder is
    a directory without __init__.py there (`runs/finetune.gin` once `make demo` made runs/).
    """
    includers: list[str] = []

    def find(name: str) -> str | None:
        if not paths.is_local(name):
            return name if paths.path(name, "gin file").exists() else None
        if os.path.isabs(name):
            return name if os.path.isfile(name) else None
        for folder in folders:
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
        return None

    def exists(name: str) -> bool:
        if find(name) is None:
            where = f"included from {includers[-1]}" if includers else "passed as --gin_file"
            raise GinFileNotFoundError(
                f"gin file {name!r} ({where}) not found; looked in "
                f"{', '.join(os.path.abspath(f) for f in folders)}. Pass --gin_search_paths="
                "DIR with the folder that holds it, or a path that exists."
            )
        return True

    @contextlib.contextmanager
    def read(name: str):
        path = find(name)
        includers.append(path)
        try:
            with epath.Path(path).open() as f:
                yield f
        finally:
            includers.pop()

    # gin keeps its readers and location prefixes in module globals and has no API to
    # replace them; swap them for the parse, put them back after.
    config = gin.config
    saved = list(config._FILE_READERS), list(config._LOCATION_PREFIXES)
    config._FILE_READERS[:] = [(read, exists)]
    config._LOCATION_PREFIXES[:] = [""]
    try:
        yield
    finally:
        config._FILE_READERS[:], config._LOCATION_PREFIXES[:] = saved


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


@contextlib.contextmanager
def separate_gin_config() -> Iterator[None]:
    """A gin config of its own for the block (e.g. a checkpoint's model.gin), leaving the
    global one -- the run's -- exactly as it was, bindings, imports and lock included."""
    config = gin.config
    saved = (
        {key: dict(values) for key, values in config._CONFIG.items()},
        set(config._IMPORTS),
        dict(config._OPERATIVE_CONFIG),
        dict(config._SINGLETONS),
        config._CONFIG_IS_LOCKED,
    )
    gin.clear_config()
    try:
        yield
    finally:
        gin.clear_config()
        bindings, imports, operative, singletons, locked = saved
        config._CONFIG.update(bindings)
        config._IMPORTS.update(imports)
        config._OPERATIVE_CONFIG.update(operative)
        config._SINGLETONS.update(singletons)
        config._set_config_is_locked(locked)


# Our loggers; everyone else's records reach the console only when they are errors.
_OWN_LOGGERS = ("flan_jax", "tasks", "benchmarks", "__main__")


class _ConsoleFilter(logging.Filter):
    """Our INFO and above; the libraries' ERRORs (all of theirs with --verbose). The first
    record it hides gets one line saying how to see them."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose
        self.hid_one = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose or record.levelno >= logging.ERROR:
            return True
        if record.name.split(".")[0] in _OWN_LOGGERS:
            return record.levelno >= logging.INFO
        if record.levelno >= logging.WARNING and not self.hid_one:
            self.hid_one = True
            print(
                "note: warnings from seqio, TensorFlow, Orbax and other libraries are hidden; "
                "--verbose shows them",
                file=sys.stderr,
                flush=True,
            )
        return False


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (tests and tools swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def configure_logging(*, verbose: bool = False) -> None:
    """One console handler on the root logger, filtered by `_ConsoleFilter`. absl (seqio's
    and Orbax's logger) and Python warnings go through it too."""
    from absl import logging as absl_logging

    absl_logging.use_python_logging(quiet=True)  # no "logging before flag parsing" banner
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ConsoleFilter(verbose))
    root = logging.getLogger()
    # Ours from an earlier call, and logging.basicConfig's (some library called it on import);
    # other handlers (a test's log capture) stay.
    for old in [
        h
        for h in root.handlers
        if getattr(h, "_flan_jax", False) or type(h) is logging.StreamHandler
    ]:
        root.removeHandler(old)
    handler._flan_jax = True
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


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
