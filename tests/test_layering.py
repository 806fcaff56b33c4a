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
    folder = os.path.join(ROOT, package)
    return sorted(f for f in os.listdir(folder) if f.endswith(".py"))


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
        path = os.path.join(ROOT, package, name)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        if _is_main(tree):
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
