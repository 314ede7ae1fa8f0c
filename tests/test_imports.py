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
    "interop.hf_t5",
    "interop.t5x",
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


def _imported_names(path, *, script_block=True):
    """What a Python file imports, anywhere in it, as absolute dotted names (`from a import b`
    gives a.b, whether b is a module or a name in a). `script_block=False` leaves out the
    `if __name__ == "__main__":` block, which runs only when the file is the script, whose
    module is `__main__` (so importing its own name there is no circle)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        if not script_block and _is_script_block(node):
            continue
        nodes.extend(reversed(list(ast.iter_child_nodes(node))))
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


def _is_script_block(node):
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (
        isinstance(test, ast.Compare)
        and getattr(test.left, "id", None) == "__name__"
        and any(getattr(c, "value", None) == "__main__" for c in test.comparators)
    )


def _modules(package, root=REPO):
    """Module name -> file, for every Python file of a package under `root`."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for name in files:
            if name.endswith(".py"):
                dotted = os.path.relpath(os.path.join(folder, name[:-3]), root)
                dotted = dotted.replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = os.path.join(folder, name)
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


def _import_graph(package, root=REPO):
    """Module -> the modules of the same package it imports (module level or in a function).
    `from a import b` imports the module a.b where there is one, else a name of a."""
    modules = _modules(package, root)
    return {
        module: {
            name if name in modules else name.rsplit(".", 1)[0]
            for name in _imported_names(path, script_block=False)
        }
        & modules.keys()
        for module, path in modules.items()
    }


def _a_cycle(imports):
    """One import cycle as [a, b, ..., a], or None: a depth-first search that meets a module
    still on its path."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(imports[module]):
            found = visit(imported)
            if found:
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(imports):
        found = visit(module)
        if found:
            return found
    return None


def test_no_module_of_tasks_imports_itself_back():
    """tasks.demo trains its vocabulary with tasks.vocab; tasks.vocab knows nothing of the demo."""
    imports = _import_graph("tasks")
    assert "tasks.vocab" in imports["tasks.demo"]
    cycle = _a_cycle(imports)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_of_flan_jax_imports_itself_back():
    """Converters (interop/) know only arrays and their own files; model_loader reads
    checkpoints through them; the import/export command (convert) sits above both."""
    imports = _import_graph("flan_jax")
    assert "flan_jax.interop.hf_t5" in imports["flan_jax.model_loader"]
    assert "flan_jax.model_loader" in imports["flan_jax.convert"]
    cycle = _a_cycle(imports)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# What a converter may import: arrays in, arrays out, files of its own format.
CONVERTER_IMPORTS = ("flan_jax.paths", "flan_jax.optim", "flan_jax.axis_names", "flan_jax.models")


def test_converters_import_nothing_above_them():
    """interop/ is pure conversion; reading and writing flan_jax checkpoints is convert's and
    model_loader's, which import the converters."""
    offenders = [
        f"{module} imports {imported}"
        for module, imports in _import_graph("flan_jax").items()
        if module.startswith("flan_jax.interop.")
        for imported in sorted(imports)
        if not imported.startswith(CONVERTER_IMPORTS)
    ]
    assert not offenders, "; ".join(offenders)


def test_the_cycle_check_finds_a_circle_through_a_function_level_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    (tmp_path / "pkg" / "d.py").write_text("if __name__ == '__main__':\n    from pkg import d\n")
    imports = _import_graph("pkg", str(tmp_path))
    assert imports["pkg.d"] == set()
    assert _a_cycle(imports) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    del imports["pkg.c"], imports["pkg.b"]
    imports["pkg.a"] = set()
    assert _a_cycle(imports) is None


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
