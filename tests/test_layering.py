"""The tree's layering (docs/ARCHITECTURE.md, "Layers"): pipelines <- cost_tf <- export; only mains reach up.

Read from the source with `ast` (function-level imports included), so a lazy import cannot hide a cycle.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What each package's library modules may import from the project (besides their own package).
ALLOWED = {"pipelines": set(), "cost_tf": {"pipelines"}, "export": {"pipelines", "cost_tf"}}
PROJECT = {"pipelines", "cost_tf", "export", "bench", "tests"}


def _modules(package):
    """The package's .py files (subpackages included) as paths relative to it."""
    folder = os.path.join(ROOT, package)
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found += [os.path.relpath(os.path.join(parent, n), folder) for n in names if n.endswith(".py")]
    return sorted(found)


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


def _is_main(tree, name=""):
    """A command-line main: a package's `__main__.py`, or `if __name__ == "__main__":` at module level."""
    if os.path.basename(name) == "__main__.py":
        return True
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
        path = os.path.join(ROOT, package, name)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        if _is_main(tree, name):
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
    assert _is_main(tree, "convert/__main__.py") and not _is_main(tree, "convert/__init__.py")
    assert os.path.join("convert", "__init__.py") in _modules("pipelines")


def test_nobody_imports_a_main():
    importers = []
    for package in sorted(PROJECT):
        for name in _modules(package):
            path = os.path.join(ROOT, package, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                importers += [f"{package}/{name}:{node.lineno}" for m in modules if m.endswith("__main__")]
    assert importers == []
