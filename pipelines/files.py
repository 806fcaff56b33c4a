"""Atomic file writes, the one way every package writes a file a reader may be watching.

A file is written under a hidden temporary name in its own folder (so `DIR/*` and `DIR/*.tfrecord*` globs
never match it), flushed to disk, then renamed over the final name: a crash leaves either the old file or
the new one, never a partial one. Local paths use os.replace (rename(2)); remote ones (gs://, ...) go through
tf.io.gfile (imported only for them, so this module stays TensorFlow-free).

Temporary names carry the writer's process id, so a later run can tell a crashed writer's leftovers
(`remove_stale_tmp`) from a file another live process is still writing.
"""

import contextlib
import json
import os
import secrets

TMP_PREFIX = ".tmp-"
TMP_INFIX = ".tmp-"  # `{name}.tmp-{pid}`: shards being written (pipelines/shard_writer.py)


def _remote(path):
    return "://" in os.fspath(path)


def tmp_path(path, suffix=""):
    """A hidden temporary name beside `path` that keeps its extension (Keras and matplotlib want it)."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}{suffix}")


def writer_pid(name):
    """The process id in a temporary file name, or None for any other name.

    Two forms: `tmp_path`'s `.tmp-{pid}-{hex}-{name}` and `{name}.tmp-{pid}` (a shard being written;
    a tag that is not a pid, e.g. the Beam engine's `.tmp-beam-{uuid}`, gives None).
    """
    if name.startswith(TMP_PREFIX):
        pid = name[len(TMP_PREFIX) :].split("-", 1)[0]
    elif TMP_INFIX in name:
        pid = name.rsplit(TMP_INFIX, 1)[1]
    else:
        return None
    return int(pid) if pid.isdigit() else None


def writer_alive(pid):
    """Whether process `pid` (the writer named in a temporary file's name) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_tmp(folder, hidden_only=False):
    """Deletes the temporary files in `folder` (local or gs://...) whose writer no longer runs; returns their
    names.

    Call it before this process writes into `folder`: temporaries tagged with this process's own id are
    leftovers of an earlier process that had the same id, and are removed too.

    Args:
      folder: a folder (a missing one holds nothing). Remote folders go through tf.io.gfile; their writers'
        pids are read as this machine's (one converting machine per remote output, docs/SCALING.md).
      hidden_only: only names starting with "." (a folder the user shares, e.g. a dataset's output).
    """
    removed = []
    if _remote(folder):
        import tensorflow as tf  # only for remote folders: this module stays light

        isdir, listdir, remove = tf.io.gfile.isdir, tf.io.gfile.listdir, tf.io.gfile.remove
        missing = (FileNotFoundError, tf.errors.NotFoundError)
    else:
        isdir, listdir, remove, missing = os.path.isdir, os.listdir, os.remove, FileNotFoundError
    names = sorted(listdir(folder)) if isdir(folder) else []
    for name in names:
        pid = writer_pid(name)
        if pid is None or (hidden_only and not name.startswith(".")):
            continue
        if pid != os.getpid() and writer_alive(pid):
            continue  # e.g. an orphaned worker of a killed run still writes it
        with contextlib.suppress(missing):
            remove(os.path.join(folder, name))
        removed.append(name)
    return removed


def _fsync(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src, dst):
    """Renames `src` over `dst` atomically (locally fsyncing `src` first, so no unwritten data shows)."""
    if _remote(src) or _remote(dst):
        import tensorflow as tf

        tf.io.gfile.rename(src, dst, overwrite=True)
        return
    _fsync(src)
    os.replace(src, dst)


def _remove(path):
    with contextlib.suppress(OSError):
        if _remote(path):
            import tensorflow as tf

            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        elif os.path.exists(path):
            os.remove(path)


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` for a writer that takes a file name (savefig, model.save, ...);
    renames it to `path` when the block ends normally and removes it when the block raises."""
    tmp = tmp_path(path)
    try:
        yield tmp
        replace(tmp, path)
    finally:
        _remove(tmp)


def write_atomic(path, data):
    """Writes `data` (str: UTF-8 text, or bytes) to `path` atomically."""
    mode = "wb" if isinstance(data, bytes | bytearray) else "w"
    with atomic_path(path) as tmp:
        if _remote(tmp):
            import tensorflow as tf

            with tf.io.gfile.GFile(tmp, mode) as f:
                f.write(data)
        else:
            with open(tmp, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(data)


def write_json(path, obj, indent=2):
    """`obj` as JSON (sorted keys, trailing newline) to `path` atomically."""
    write_atomic(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
