"""Macros for the root BUILD: one py_binary per `python -m` main, one py_test per test module."""

def _py_module_launcher_impl(ctx):
    ctx.actions.write(
        output = ctx.outputs.out,
        content = (
            "# Generated: runs `python -m {module}` so the module's own folder is not\n" +
            "# put first on sys.path (export/onnx/ must not shadow the onnx package).\n" +
            "import os\n" +
            "import runpy\n" +
            "import sys\n\n" +
            "# `bazel run` starts in the runfiles tree; relative flags mean the caller's folder.\n" +
            "if os.environ.get(\"BUILD_WORKING_DIRECTORY\"):\n" +
            "    os.chdir(os.environ[\"BUILD_WORKING_DIRECTORY\"])\n" +
            "# While the package imports, argv[0] reads as under `python -m` (pipelines/quiet.py).\n" +
            "sys.argv[0] = \"-m\"\n" +
            "runpy.run_module(\"{module}\", run_name=\"__main__\", alter_sys=True)\n"
        ).format(module = ctx.attr.module),
    )

_py_module_launcher = rule(
    implementation = _py_module_launcher_impl,
    attrs = {
        "module": attr.string(mandatory = True),
        "out": attr.output(mandatory = True),
    },
)

def py_module_binaries(modules, deps, data = []):
    """A py_binary `//:<module>` for each dotted module whose source file exists.

    Args:
      modules: dotted names, e.g. "cost_tf.train" (file cost_tf/train/__main__.py: a main
        is its package's __main__). Missing files are skipped, so the BUILD stays valid while
        modules are being written.
      deps: py_library labels every binary needs.
      data: runfiles every binary gets.
    """
    files = {m: m.replace(".", "/") + "/__main__.py" for m in modules}
    existing = native.glob(files.values())
    for module in modules:
        if files[module] not in existing:
            continue
        launcher = "_bazel_main/{}.py".format(module)
        _py_module_launcher(
            name = module + "_launcher",
            module = module,
            out = launcher,
        )
        native.py_binary(
            name = module,
            srcs = [launcher],
            main = launcher,
            python_version = "PY3",
            deps = deps,
            data = data,
        )

def pytest_tests(srcs, deps, data = [], sizes = {}, runner = "//tools/bazel:pytest_runner.py"):
    """A py_test `//:<basename>` per pytest module, run by tools/bazel/pytest_runner.py.

    Args:
      srcs: test files, e.g. glob(["tests/test_*.py"]).
      deps: py_library labels the tests import.
      data: files every test needs (conftest.py, helpers, __init__.py); may include the tests.
      sizes: {"test_x": "large"} overrides of the default "medium" size ("enormous": timeout eternal).
      runner: the pytest runner source.
    """
    for src in srcs:
        name = src.split("/")[-1][:-len(".py")]
        native.py_test(
            name = name,
            srcs = [runner],
            main = runner,
            args = ["$(rootpath {})".format(src)],
            data = [src] + [f for f in data if f != src],
            deps = deps,
            python_version = "PY3",
            size = sizes.get(name, "medium"),
            # Slack for a 2-core machine shared with other work; `bazel test` prints each duration.
            # "enormous" tests (whole mains in subprocesses) get 3600 s.
            timeout = "eternal" if sizes.get(name) == "enormous" else "long",
        )
