"""Main of every py_test: runs one pytest module and exits with pytest's code.

Usage (as Bazel passes it): pytest_runner.py tests/test_x.py [more pytest args]
The working directory is the workspace root inside the runfiles tree, so test
paths are workspace-relative and `import cost_tf` resolves to the packaged sources.
"""

import os
import sys


def main(argv):
    if not argv:
        raise SystemExit("pytest_runner: expected a test file path. Received: argv=[]")
    # Runfiles are symlinks into the source tree: keep __pycache__ out of both.
    sys.dont_write_bytecode = True
    import pytest  # pylint: disable=g-import-not-at-top

    args = list(argv) + ["-q", "-p", "no:cacheprovider", "--rootdir", os.getcwd()]
    test_filter = os.environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:  # `bazel test //:test_x --test_filter=EXPR` == `pytest -k EXPR`.
        args += ["-k", test_filter]
    test_tmpdir = os.environ.get("TEST_TMPDIR")
    if test_tmpdir:  # Bazel's per-test scratch folder, removed by Bazel; not a shared /tmp.
        args += ["--basetemp", os.path.join(test_tmpdir, "pytest")]
    xml_output = os.environ.get("XML_OUTPUT_FILE")
    if xml_output:  # Bazel's test.xml: per-test-case results in `bazel-testlogs`.
        args += ["--junitxml", xml_output]
    return int(pytest.main(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
