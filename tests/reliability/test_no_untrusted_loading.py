"""Item 7: nothing in the project unpickles files or evaluates user input. Checkpoints are
Orbax (tensorstore + JSON), Hugging Face weights are safetensors; TPU scripts pass user
values as quoted words only."""

import ast
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PYTHON_ROOTS = ("flan_jax", "tasks", "benchmarks", "tpu_scripts")
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "shelve",
    "marshal",
}


def unsafe_calls(source: str) -> list[str]:
    """Lines that load pickles or evaluate text, found in the syntax tree (not in strings)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names]
            if any(name.split(".")[0] in UNSAFE_MODULES for name in names):
                found.append(f"line {node.lineno}: imports {', '.join(names)}")
        elif isinstance(node, ast.Call):
            function = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if function in ("eval", "exec"):
                found.append(f"line {node.lineno}: {function}()")
            elif function in ("np.load", "numpy.load") and keywords.get("allow_pickle") == "True":
                found.append(f"line {node.lineno}: {function}(allow_pickle=True)")
            elif function == "torch.load" and keywords.get("weights_only") != "True":
                found.append(f"line {node.lineno}: torch.load without weights_only=True")
            elif function.endswith("read_pickle") or function in ("yaml.load", "yaml.unsafe_load"):
                found.append(f"line {node.lineno}: {function}()")
    return found


def python_files():
    for root in PYTHON_ROOTS:
        yield from glob.glob(os.path.join(REPO, root, "**", "*.py"), recursive=True)


def test_the_checker_finds_what_it_looks_for():
    bad = (
        "import pickle\nfrom joblib import load\nimport numpy as np\nimport torch\n"
        "np.load('x.npy', allow_pickle=True)\ntorch.load('w.pt')\neval(user_text)\n"
        "s = 'import pickle'  # a string is fine\nnp.load('x.npy')\n"
        "torch.load('w.pt', weights_only=True)\n"
    )
    assert unsafe_calls(bad) == [
        "line 1: imports pickle",
        "line 2: imports joblib, load",
        "line 5: np.load(allow_pickle=True)",
        "line 6: torch.load without weights_only=True",
        "line 7: eval()",
    ]


def test_no_pickle_or_eval_in_the_sources():
    offenders = {}
    for path in python_files():
        with open(path, encoding="utf-8") as f:
            found = unsafe_calls(f.read())
        if found:
            offenders[os.path.relpath(path, REPO)] = found
    assert offenders == {}


def test_tpu_scripts_never_evaluate_user_input():
    scripts = glob.glob(os.path.join(REPO, "tpu_scripts", "*.sh"))
    if not scripts:
        pytest.skip("no tpu_scripts/*.sh yet")
    evaluating = re.compile(r"(^|[;&|(`\s])(eval|source \$|\. \$|(ba)?sh -c \"?\$)")
    offenders = []
    for path in scripts:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                code = line.split("#", 1)[0] if not line.lstrip().startswith("#!") else ""
                if evaluating.search(code):
                    offenders.append(f"{os.path.basename(path)}:{number}: {line.strip()}")
    assert offenders == []
