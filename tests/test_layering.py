"""The tree's layering (docs/ARCHITECTURE.md, "Layers"): pipelines <- cost_tf <- export; only mains reach up.

Read from the source with `ast` (function-level imports included), so a lazy import cannot hide a cycle. A main
is a package's `__main__.py` (or a bench/ script); nothing imports a main, no library module defines a flag,
and a main defines its flags at module level.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What each package's library modules may import from the project (besides their own package).
ALLOWED = {"pipelines": set(), "cost_tf": {"pipelines"}, "export": {"pipelines", "cost_tf"}}
PROJECT = {"pipelines", "cost_tf", "export", "bench", "tests"}


def _modules(package):
    """Every .py file of `package`, subpackages included, relative to the package folder."""
    folder = os.path.join(ROOT, package)
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]
        found += [os.path.relpath(os.path.join(parent, n), folder) for n in names if n.endswith(".py")]
    return sorted(found)


def _parse(package, name):
    path = os.path.join(ROOT, package, name)
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def _imported_modules(tree):
    """Dotted names of every absolute import (`from a.b import c` gives a.b and a.b.c)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _flag_definitions(tree):
    """(line, inside a function) of every `flags.DEFINE_*(...)` / `DEFINE_*(...)` call."""
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nested |= {id(n) for n in ast.walk(node) if n is not node}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.startswith("DEFINE_") or name == "define_flags":
                yield node.lineno, id(node) in nested


def _project_imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in PROJECT:
                yield node.lineno, top


def _is_main(tree):
    """A command-line main: `if __name__ == "__main__":` at module level."""
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            left = node.test.left
            if isinstance(left, ast.Name) and left.id == "__name__":
                return True
    return False


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_library_modules_import_only_lower_layers(package):
    allowed = ALLOWED[package] | {package}
    violations = []
    for name in _modules(package):
        tree = _parse(package, name)
        if os.path.basename(name) == "__main__.py":
            continue
        violations += [
            f"{package}/{name}:{line} imports {top}"
            for line, top in _project_imports(tree)
            if top not in allowed
        ]
    assert violations == []


def test_the_checker_sees_lazy_imports_and_mains():
    tree = ast.parse("def f():\n    from export import onnx\n")
    assert list(_project_imports(tree)) == [(2, "export")]
    assert _is_main(ast.parse('if __name__ == "__main__":\n    pass\n'))
    assert not _is_main(tree)


def _main_modules():
    """Dotted names of the `python -m` mains: packages' __main__.py."""
    return {
        f"{package}." + name[: -len("/__main__.py")].replace(os.sep, ".")
        for package in ALLOWED
        for name in _modules(package)
        if name.endswith("__main__.py")
    }


def test_mains_are_packages_main_files_that_nobody_imports():
    mains = _main_modules()
    # The documented commands (README, docs/) all exist as mains.
    assert mains >= {
        "cost_tf.train",
        "cost_tf.evaluate",
        "cost_tf.coefficients",
        "cost_tf.compare",
        "cost_tf.demo",
        "cost_tf.gradcam",
        "export.onnx",
        "export.saved_model",
        "export.tflite",
        "pipelines.convert",
        "pipelines.synthetic",
    }
    offenders = []
    for package in sorted(PROJECT):
        for name in _modules(package):
            tree = _parse(package, name)
            if os.path.basename(name) != "__main__.py" and package != "bench" and _is_main(tree):
                offenders.append(f"{package}/{name}: a library module with a main block")
            offenders += [
                f"{package}/{name} imports {module}"
                for module in _imported_modules(tree)
                if module.endswith(".__main__")
            ]
    assert offenders == []


@pytest.mark.parametrize("package", sorted(PROJECT))
def test_flags_are_defined_by_mains_at_module_level(package):
    offenders = []
    for name in _modules(package):
        if package == "tests" or (package, name) == ("pipelines", "mains.py"):
            continue  # tests define flags on their own FlagValues; mains.define_flags is what mains call
        tree = _parse(package, name)
        is_main = os.path.basename(name) == "__main__.py" or (package == "bench" and _is_main(tree))
        for line, in_function in _flag_definitions(tree):
            if not is_main:
                offenders.append(f"{package}/{name}:{line}: a flag defined in a library module")
            elif in_function:
                offenders.append(f"{package}/{name}:{line}: a flag defined inside a function")
    assert offenders == []
