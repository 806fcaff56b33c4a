"""pipelines/readers.py: the class-list reader shared by train, evaluate and coefficients."""

import dataclasses
import json
import os

import pytest
import tensorflow as tf

from pipelines.annotations import AnnotationError
from pipelines.readers import read_annotations, read_class_names


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_one_name_per_line_keeps_commas_in_names(tmp_path):
    # classes.txt as pipelines.convert writes it: Kinetics class names may hold commas.
    path = _write(tmp_path, "classes.txt", "abseiling\nclean and jerk, weightlifting\n\nzumba\n")
    assert read_class_names(path) == ["abseiling", "clean and jerk, weightlifting", "zumba"]


def test_moments_categories_are_ordered_by_index(tmp_path):
    path = _write(tmp_path, "moments_categories.txt", "running,2\nasking,0\nbaking,1\n")
    assert read_class_names(path) == ["asking", "baking", "running"]


def test_a_utf8_bom_is_not_part_of_the_first_name(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffcafé\nthé\n".encode())
    assert read_class_names(str(path)) == ["café", "thé"]


def test_remote_paths_go_through_gfile():
    path = "ram://cost_tf_test_readers/classes.txt"
    tf.io.gfile.makedirs("ram://cost_tf_test_readers")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("walking,1\nsitting,0\n")
    assert read_class_names(path) == ["sitting", "walking"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\nb\na\n", "classes.txt:3: class 'a' repeats line 1"),
        ("\n\n", "lists no classes"),
        ("x,0\ny,2\n", "category indices must be 0..1; missing [1]"),
    ],
)
def test_bad_lists_name_the_file_and_line(tmp_path, text, message):
    path = _write(tmp_path, "classes.txt", text)
    with pytest.raises(AnnotationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_class_names(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AnnotationError, match="nope.txt"):
        read_class_names(str(tmp_path / "nope.txt"))


def _tree(root, files):
    """Writes {relative path: bytes} under a local folder and the same under a ram:// URL."""
    local, url = str(root), f"ram://cost_tf_test_readers_{root.name}"
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        tf.io.gfile.makedirs(os.path.dirname(f"{url}/{rel}"))
        with tf.io.gfile.GFile(f"{url}/{rel}", "wb") as f:
            f.write(data)
    return local, url


@pytest.mark.parametrize("dataset", ["kinetics", "moments"])
def test_urls_read_like_local_paths(tmp_path, dataset):
    """read_annotations over ram:// (TensorFlow's in-memory filesystem, a stand-in for gs://): the
    CSV read through gfile, the video folder listed with gfile.walk (a video in a class folder, a flat
    one, one under another extension than its row names), bad rows and missing videos as locally."""
    if dataset == "kinetics":
        csv_name, files = (
            "train.csv",
            {
                "train.csv": b"label,youtube_id,time_start,time_end,split\n"
                b"abseiling,aaa,10,20,train\nzumba,bbb,0,10,train\nzumba,ccc,1,11,train\nzumba,ddd,1\n",
                "videos/abseiling/aaa_000010_000020.mp4": b"",
                "videos/bbb_000000_000010.webm": b"",
            },
        )
    else:
        csv_name, files = (
            "trainingSet.csv",
            {
                "trainingSet.csv": b"zumba/x1.mp4,zumba,3,0\nabseiling/x2.mp4,abseiling,2,1\n"
                b"abseiling/gone.mp4,abseiling,2,1\nzumba/x3.mp4,salsa,1,1\n",
                "moments_categories.txt": b"abseiling,0\nzumba,1\n",
                "videos/zumba/x1.mp4": b"",
                "videos/abseiling/x2.webm": b"",
            },
        )
    local, url = _tree(tmp_path, files)
    try:
        want_records, want_report = read_annotations(
            dataset, f"{local}/{csv_name}", f"{local}/videos", skip_bad_rows=True
        )
        records, report = read_annotations(dataset, f"{url}/{csv_name}", f"{url}/videos", skip_bad_rows=True)
        assert len(want_records) == 2 and len(want_report.missing) == 1 and len(want_report.bad_rows) == 1
        as_local = [dataclasses.replace(r, video_path=r.video_path.replace(url, local)) for r in records]
        assert as_local == want_records
        assert all(r.video_path.startswith(url) for r in records)
        assert json.loads(json.dumps(report.to_dict()).replace(url, local)) == want_report.to_dict()
        # A byte that is not UTF-8 fails with the local file's message.
        bad = files[csv_name] + b"zumba,\xff\xfe,1,2,train\n"
        (tmp_path / csv_name).write_bytes(bad)
        tf.io.gfile.remove(f"{url}/{csv_name}")  # ram:// does not truncate a file opened for writing
        with tf.io.gfile.GFile(f"{url}/{csv_name}", "wb") as f:
            f.write(bad)
        with pytest.raises(AnnotationError, match="not UTF-8") as local_error:
            read_annotations(dataset, f"{local}/{csv_name}", f"{local}/videos", skip_bad_rows=True)
        with pytest.raises(AnnotationError, match="not UTF-8") as url_error:
            read_annotations(dataset, f"{url}/{csv_name}", f"{url}/videos", skip_bad_rows=True)
        assert str(url_error.value).replace(url, local) == str(local_error.value)
    finally:
        tf.io.gfile.rmtree(url)


def test_own_bad_rows_are_those_of_the_reports_file():
    from pipelines.annotations import AnnotationReport

    rows = [
        {"file": "val.csv", "line": 3, "reason": "bad"},
        {"file": "train.csv", "line": 9, "reason": "bad"},
        {"file": "val.csv", "line": 7, "reason": "worse"},
    ]
    report = AnnotationReport("val.csv", ["a"], num_rows=9, bad_rows=rows)
    assert report.own_bad_rows() == [rows[0], rows[2]]
