"""Quiet start-up for the command-line mains: no screen of TensorFlow C++ log lines before the main speaks.

TensorFlow 2.21 writes its import-time lines (CUDA probing, CPU-feature notes, "failed call to cuInit") through
absl's C++ logging before that is initialised, so TF_CPP_MIN_LOG_LEVEL alone does not hide them. For a
`python -m <package>.<main>` run, each package's __init__ calls `quiet_startup()` first: TensorFlow is imported
and its devices listed with file descriptor 2 captured; the capture is dropped, or printed if the import
fails. TF_CPP_MIN_LOG_LEVEL=2 then keeps later INFO/WARNING C++ lines out too. Nothing changes when the
package is imported as a library, when TF_CPP_MIN_LOG_LEVEL is set, or when the main gets `--verbosity`/`-v`
(absl's flag), which brings every line back.
"""

import os
import sys
import tempfile


def _wants_logs(argv):
    return any(a in ("-v", "--verbosity") or a.startswith(("-v=", "--verbosity=")) for a in argv)


def quiet_startup(argv=None, environ=None):
    """Imports TensorFlow quietly when this process is a `python -m` main; returns True if it did.

    Args:
      argv: the command line (default sys.argv; during `python -m`, argv[0] is "-m" while the package
        of the main is imported — documented CPython behaviour, and how a main is told from a library use).
      environ: the environment to read and set (default os.environ).
    """
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if not argv or argv[0] != "-m":
        return False
    if "TF_CPP_MIN_LOG_LEVEL" in environ or _wants_logs(argv[1:]):
        return False
    if "tensorflow" in sys.modules:  # too late to capture anything
        return False
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # CUDA/cuInit probing logs here, once per process
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.buffer.write(captured.read())
            sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return True
