"""Which package may import what: flan_jax's core runs where only jax, flax, optax and orbax are
installed (no TensorFlow, no seqio), and tasks/ never imports flan_jax (data flows one way)."""

import ast
import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = (
    "decoding",
    "losses",
    "partitioning",
    "optim",
    "trainer",
    "checkpoints",
    "checkpoint_integrity",
    "aot",
)
MODELS = tuple(
    f"models.{module.name}"
    for module in pkgutil.iter_modules([os.path.join(REPO, "flan_jax", "models")])
)
REFUSED = ("tensorflow", "seqio")


def _refusing_import(modules, refused=REFUSED):
    """Imports `modules` in a fresh interpreter whose import system refuses `refused`."""
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, sys

        REFUSED = {tuple(refused)!r}

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in REFUSED:
                    raise ImportError(f"{{name}} is refused: the core must import without it")
                return None

        sys.meta_path.insert(0, Refuse())
        for module in {tuple(modules)!r}:
            importlib.import_module(module)
        print("imported", len({tuple(modules)!r}))
    """)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_the_core_imports_without_tensorflow_or_seqio():
    modules = [f"flan_jax.{name}" for name in (*MODELS, *CORE)]
    result = _refusing_import(modules)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["imported", str(len(modules))]


def test_the_refusal_catches_a_module_that_needs_tensorflow():
    result = _refusing_import(["flan_jax.data"])
    assert result.returncode != 0
    assert "is refused: the core must import without it" in result.stderr


def _imported_names(path):
    """What a Python file imports, anywhere in it, as absolute dotted names (`from a import b`
    gives a.b, whether b is a module or a name in a)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield node.args[0].value


def _modules(package):
    """Module name -> file, for every Python file of a package in the repo."""
    modules = {}
    for root, _, files in os.walk(os.path.join(REPO, package)):
        for name in files:
            if name.endswith(".py"):
                dotted = os.path.relpath(os.path.join(root, name[:-3]), REPO).replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = os.path.join(root, name)
    return modules


def test_tasks_never_import_flan_jax():
    offenders = [
        f"{module} imports {name}"
        for module, path in _modules("tasks").items()
        for name in _imported_names(path)
        if name.split(".")[0] == "flan_jax"
    ]
    assert not offenders, "tasks/ must not import flan_jax (flan_jax imports tasks): " + "; ".join(
        offenders
    )


def test_no_module_of_tasks_imports_itself_back():
    """tasks.demo trains its vocabulary with tasks.vocab; tasks.vocab knows nothing of the demo."""
    modules = _modules("tasks")
    imports = {}
    for module, path in modules.items():
        # `from a import b` imports the module a.b where there is one, else a name of a.
        imports[module] = {
            name if name in modules else name.rsplit(".", 1)[0] for name in _imported_names(path)
        } & modules.keys()
    assert "tasks.vocab" in imports["tasks.demo"]

    def cycle_from(module, path):
        for imported in sorted(imports[module]):
            if imported in path:
                return path[path.index(imported) :] + [imported]
            found = cycle_from(imported, path + [imported])
            if found:
                return found
        return None

    for module in sorted(modules):
        cycle = cycle_from(module, [module])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "source, found",
    [
        ("import flan_jax.data", ["flan_jax.data"]),
        ("from flan_jax import gin_utils, cli", ["flan_jax.gin_utils", "flan_jax.cli"]),
        ("def f():\n    from flan_jax.data import x", ["flan_jax.data.x"]),
        ("importlib.import_module('flan_jax.cli')", ["flan_jax.cli"]),
        ("from . import demo", []),
    ],
)
def test_the_static_check_sees_every_kind_of_import(tmp_path, source, found):
    path = tmp_path / "module.py"
    path.write_text(source)
    assert list(_imported_names(str(path))) == found


def test_no_test_module_imports_another():
    """Shared test code lives in conftest.py or a helpers module (not named test_*), so a test
    module runs alone and its tests are collected once."""
    tests = os.path.dirname(os.path.abspath(__file__))
    test_modules = {
        name[:-3]
        for _, _, files in os.walk(tests)
        for name in files
        if name.startswith("test_") and name.endswith(".py")
    }
    offenders = [
        f"{os.path.relpath(os.path.join(root, name), REPO)} imports {imported}"
        for root, _, files in os.walk(tests)
        for name in sorted(files)
        if name.endswith(".py")
        for imported in _imported_names(os.path.join(root, name))
        if imported.split(".")[0] in test_modules
    ]
    assert not offenders, "; ".join(offenders)
