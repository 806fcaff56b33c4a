"""Registers the project's virtualenv python as Bazel's Python 3 toolchain.

Bazel's native py_* rules run their stub with `stub_shebang` and then exec
`interpreter_path`. Pointing that at `<workspace>/.venv/bin/python` (created by
`make setup`) gives tests and binaries TensorFlow & co. without Bazel ever
downloading anything. The path is derived from the workspace root at fetch time,
so a clone in any folder works; nothing absolute is checked in.
`--python_path` alone is ignored while Python toolchains are enabled.
"""

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "venv_py3",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
    stub_shebang = "#!/usr/bin/env python3",
    visibility = ["//visibility:public"],
)

py_runtime_pair(
    name = "venv_runtime_pair",
    py3_runtime = ":venv_py3",
)

toolchain(
    name = "toolchain",
    toolchain = ":venv_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
    visibility = ["//visibility:public"],
)
"""

def _venv_python_impl(repository_ctx):
    override = repository_ctx.os.environ.get("BAZEL_VENV_PYTHON", "")
    if override:
        interpreter = repository_ctx.path(override)
    else:
        workspace_root = repository_ctx.path(Label("@//:WORKSPACE")).dirname
        interpreter = workspace_root.get_child(repository_ctx.attr.venv).get_child("bin").get_child("python")
    if not interpreter.exists:
        fail(("venv_python: no interpreter at {}. Run `make setup` first (it creates the " +
              "virtualenv), or set BAZEL_VENV_PYTHON to a python that has the requirements.").format(interpreter))

    # Keep the unresolved path: a venv python only finds its site-packages through
    # pyvenv.cfg next to the path it was started by.
    repository_ctx.file("WORKSPACE", "workspace(name = \"{}\")\n".format(repository_ctx.name))
    repository_ctx.file("BUILD", _BUILD.format(interpreter = str(interpreter)))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    attrs = {
        "venv": attr.string(default = ".venv", doc = "virtualenv folder, relative to the workspace root"),
    },
    environ = ["BAZEL_VENV_PYTHON"],
    local = True,
)
