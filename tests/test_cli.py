"""The front door: gin files found from any directory (also the repo root once `make demo` made
runs/), errors that say what to pass, --help on every entry point, one logging set-up, and
gin/ shipped inside the package."""

import importlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile

import gin
import pytest
from absl import logging as absl_logging
from train_testing import REPO

from flan_jax import cli

ENTRY_POINTS = [
    "flan_jax.train",
    "flan_jax.evaluate",
    "flan_jax.infer",
    "flan_jax.aot",
    "flan_jax.convert",
    "flan_jax.inspect_mixture",
]


@pytest.fixture(autouse=True)
def clean_gin_and_logging():
    yield
    gin.clear_config()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_flan_jax", False)]:
        root.removeHandler(handler)


def test_run_files_parse_beside_a_runs_folder(tmp_path, monkeypatch):
    # `make demo` leaves runs/demo/ in the repo root; gin's own lookup then took runs/ for a
    # Python package and failed with a bare TypeError on `include 'runs/finetune.gin'`.
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cli.parse([f"--gin_file={REPO}/gin/runs/demo.gin", "--gin.MODEL_DIR='/tmp/x'"], "test")
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == "flan_demo"
    gin.clear_config()
    (tmp_path / "my_run.gin").write_text("include 'runs/flan_t5/base.gin'\nTRAIN_STEPS = 7\n")
    cli.parse(["--gin_file=my_run.gin", "--gin.MODEL_DIR='/tmp/x'"], "test")
    assert gin.query_parameter("%TRAIN_STEPS") == 7
    assert gin.query_parameter("%BATCH_SIZE") == 64  # from the included preset


def test_search_paths_come_before_the_current_directory_and_flan_jax(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    (mine / "models" / "t5_1_1").mkdir(parents=True)
    (mine / "models" / "t5_1_1" / "tiny.gin").write_text(
        "include '" + os.path.join(cli.GIN_DIR, "models/t5_1_1/tiny.gin") + "'\nVOCAB_SIZE = 640\n"
    )
    monkeypatch.chdir(tmp_path)
    cli.parse(
        [f"--gin_search_paths={mine}", "--gin_file=runs/demo.gin", "--gin.MODEL_DIR='/tmp/x'"],
        "test",
    )
    assert gin.query_parameter("%VOCAB_SIZE") == 640


def test_a_missing_include_names_the_file_its_includer_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_run.gin").write_text("include 'runs/flan_t5/bsae.gin'\n")
    with pytest.raises(FileNotFoundError) as error:
        cli.parse(["--gin_file=my_run.gin"], "test")
    assert str(error.value).startswith(
        f"gin file 'runs/flan_t5/bsae.gin' (included from {tmp_path}/my_run.gin) not found; "
        f"looked in {tmp_path}, {cli.GIN_DIR}. Pass --gin_search_paths=DIR"
    )
    with pytest.raises(FileNotFoundError, match=r"'nope.gin' \(passed as --gin_file\) not found"):
        cli.parse(["--gin_file=nope.gin"], "test")


def test_checkpoint_flag_is_the_checkpoint_macro():
    cli.parse(
        [
            "--gin_file=eval/evaluate.gin",
            "--checkpoint=/data/flan-t5-base",
            "--gin.OUTPUT_DIR='/tmp/eval'",
        ],
        "test",
        checkpoint_macro="CHECKPOINT_PATH",
    )
    assert gin.query_parameter("%CHECKPOINT_PATH") == "/data/flan-t5-base"


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_has_help(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "--verbose" in out


@pytest.mark.parametrize(
    "module, argv, message",
    [
        (
            "flan_jax.infer",
            ["--hf_dir", "x", "--input", "i", "--output", "o"],
            "--hf_dir is now --checkpoint",
        ),
        (
            "flan_jax.evaluate",
            ["--gin_file=eval/evaluate.gin", "--gin.HF_DIR='x'"],
            "--gin.HF_DIR is now --gin.CHECKPOINT_PATH",
        ),
        (
            "flan_jax.convert",
            ["export", "--format", "hf", "--checkpoint", "c", "--output", "o", "--gin_file=m.gin"],
            "--gin_file is now --model_gin_file",
        ),
        (
            "flan_jax.convert",
            ["import", "--format", "hf", "--hf_dir", "d", "--output", "o"],
            "--hf_dir is now --checkpoint",
        ),
        (
            "flan_jax.convert",
            ["import", "--format", "t5x", "--checkpoint", "c", "--out", "o"],
            "--out is now --output",
        ),
    ],
)
def test_old_spellings_name_the_new_ones(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_library_warnings_stay_off_the_console_ours_do_not(capsys):
    cli.configure_logging()
    absl_logging.warning("The FunctionDataset is not cached")  # as seqio logs it
    logging.getLogger("tensorflow").warning("another library warning")
    logging.getLogger("flan_jax.checkpoints").info("restored step 4")
    logging.getLogger("orbax").error("a library error")
    err = capsys.readouterr().err
    assert "not cached" not in err and "another library warning" not in err
    assert err.count("--verbose shows them") == 1
    assert "INFO flan_jax.checkpoints: restored step 4" in err
    assert "ERROR orbax: a library error" in err
    cli.configure_logging(verbose=True)
    absl_logging.warning("The FunctionDataset is not cached")
    assert "not cached" in capsys.readouterr().err
    assert len([h for h in logging.getLogger().handlers if getattr(h, "_flan_jax", False)]) == 1


def test_gin_files_ship_inside_the_package(tmp_path):
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("flan_jax", "tasks", "gin"):
        shutil.copytree(os.path.join(REPO, name), source / name, ignore=ignore)
    shutil.copy(os.path.join(REPO, "setup.py"), source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").iterdir()
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("flan_jax/gin/")}
    expected = {
        "flan_jax/gin/" + os.path.relpath(os.path.join(root, name), os.path.join(REPO, "gin"))
        for root, _, names in os.walk(os.path.join(REPO, "gin"))
        for name in names
        if name.endswith(".gin")
    }
    assert "flan_jax/gin/runs/finetune.gin" in shipped and shipped == expected


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_points_tune_malloc_before_numpy_tf_or_jax_load(module):
    """Threads that numpy, TF or jax start keep arenas of their own: the entry module must
    call allocator.configure before importing them (a spy reports what had loaded, then exits)."""
    code = (
        "import runpy, sys\n"
        "from flan_jax import allocator\n"
        "def first():\n"
        "    print(sorted(m for m in ('numpy', 'jax', 'tensorflow') if m in sys.modules))\n"
        "    raise SystemExit(0)\n"
        "allocator.configure = first\n"
        f"runpy.run_module({module!r}, run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
