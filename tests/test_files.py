"""pipelines/files.py: atomic writes leave the old file or the new one, never a partial one or a temp file."""

import glob
import json
import os

import pytest
import tensorflow as tf

from pipelines import files


def test_writes_replace_whole_files_and_leave_no_temporary(tmp_path):
    path = str(tmp_path / "report.json")
    files.write_json(path, {"a": 1})
    files.write_json(path, {"b": [1, 2], "a": 2})
    assert (tmp_path / "report.json").read_text() == '{\n  "a": 2,\n  "b": [\n    1,\n    2\n  ]\n}\n'
    files.write_atomic(str(tmp_path / "blob.bin"), b"\x00\x01")
    files.write_atomic(str(tmp_path / "names.txt"), "café\n")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "names.txt").read_bytes() == "café\n".encode()
    assert sorted(os.listdir(tmp_path)) == ["blob.bin", "names.txt", "report.json"]


def test_files_are_readable_by_others(tmp_path):
    # mkstemp would make them 0600; outputs of a run are for everyone who reads it (umask decides).
    umask = os.umask(0o022)
    try:
        files.write_atomic(str(tmp_path / "a.txt"), "x")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == 0o644


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = str(tmp_path / "model.keras")
    files.write_atomic(path, "old")
    with pytest.raises(RuntimeError, match="disk full"), files.atomic_path(path) as tmp:
        assert os.path.basename(tmp).startswith(files.TMP_PREFIX) and tmp.endswith(".keras")
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")
    assert (tmp_path / "model.keras").read_text() == "old"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_temporary_names_are_hidden_from_globs(tmp_path):
    # A hidden name: shells and Python's glob skip it; tf.io.gfile.glob does not, which is why
    # pipelines.dataset also drops hidden files from its matches.
    pattern = str(tmp_path / "*.tfrecord*")
    with files.atomic_path(str(tmp_path / "train-00000-of-00001.tfrecord")) as tmp:
        open(tmp, "wb").close()
        assert os.path.basename(tmp).startswith(".")
        assert glob.glob(pattern) == []
    assert [os.path.basename(p) for p in glob.glob(pattern)] == ["train-00000-of-00001.tfrecord"]


def test_remote_paths_go_through_gfile():
    folder = "ram://cost_tf_test_files"
    tf.io.gfile.makedirs(folder)
    files.write_json(f"{folder}/metrics.json", {"top1": 0.5})
    files.write_atomic(f"{folder}/metrics.json", '{"top1": 0.75}')
    with tf.io.gfile.GFile(f"{folder}/metrics.json") as f:
        assert json.load(f) == {"top1": 0.75}
    assert tf.io.gfile.listdir(folder) == ["metrics.json"]


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    live, dead = os.getppid(), 999_999_999  # above any pid_max: no such process
    assert files.writer_pid(os.path.basename(files.tmp_path(str(tmp_path / "a.json")))) == os.getpid()
    assert files.writer_pid("train-00000-of-00002.tfrecord.tmp-123") == 123
    assert [files.writer_pid(n) for n in ("a.tfrecord.tmp-beam-0a1b", "report.json", ".tmp-x-report")] == [
        None
    ] * 3
    names = {
        f".tmp-{dead}-0a1b2c3d-report.json": False,  # a crashed files.write_atomic
        f".tmp-{live}-0a1b2c3d-report.json": True,  # another process writing it now
        f".tmp-{os.getpid()}-0a1b2c3d-classes.txt": False,  # an earlier process with this pid
        f".a.tfrecord.tmp-{dead}": False,
        f"b.tfrecord.tmp-{dead}": True,  # not hidden: kept with hidden_only
        f"c.tfrecord.tmp-{live}": True,
        "d.tfrecord.tmp-beam-0a1b": True,  # no pid: not this function's
        "e.tfrecord": True,
    }
    for name in names:
        (tmp_path / name).write_text("x")
    removed = files.remove_stale_tmp(str(tmp_path), hidden_only=True)
    assert removed == sorted(n for n, kept in names.items() if not kept)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, kept in names.items() if kept)
    assert files.remove_stale_tmp(str(tmp_path)) == [f"b.tfrecord.tmp-{dead}"]
    assert files.remove_stale_tmp(str(tmp_path / "missing")) == []
