"""Shared pytest setup: quiet TensorFlow logs, repo root importable, test clips."""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Mains under test autotune by default: their cache goes to a scratch folder, never the user's ~/.cache.
os.environ.setdefault("COST_TF_AUTOTUNE_CACHE", tempfile.mkdtemp(prefix="cost_tf_autotune_"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
